"""The gRPC server: servicer, interceptors, scoring engine and process lifecycle."""

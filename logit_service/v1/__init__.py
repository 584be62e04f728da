"""Generated gRPC/protobuf code for logit_service.v1 (regenerate with scripts/gen_protos.sh)."""

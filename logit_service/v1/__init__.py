"""The generated API moved to `logit_common.v1` (carried by the client distribution); the modules here
are aliases of those, kept so existing imports of `logit_service.v1` go on working."""

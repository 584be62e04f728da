"""Generated gRPC/protobuf code for logit_service.v1 and the .proto it comes from (regenerate with
scripts/gen_protos.sh)."""

#!/usr/bin/env bash
# Regenerates logit_service/v1/*_pb2*.py from protos/. The only way generated code should change.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
"$PY" -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. \
  protos/logit_service/v1/logit_service.proto

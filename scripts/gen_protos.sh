#!/usr/bin/env bash
# Regenerates clients/logit_common/v1/*_pb2*.py from the .proto beside them. The only way generated code
# should change. The include root is clients/, so the file's path (logit_common/v1/) is its Python
# package and the generated imports come out right without rewriting.
set -euo pipefail
cd "$(dirname "$0")/../clients"
PY=${PYTHON:-python}
"$PY" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. \
  logit_common/v1/logit_service.proto

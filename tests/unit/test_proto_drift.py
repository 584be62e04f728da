"""The checked-in generated code is exactly what the .proto generates."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ["logit_service_pb2.py", "logit_service_pb2.pyi", "logit_service_pb2_grpc.py"]


def test_generated_code_matches_the_proto(tmp_path):
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-Iprotos", "--python_out=.", "--pyi_out=.", "--grpc_python_out=.",
         "protos/logit_service/v1/logit_service.proto"],
        cwd=tmp_path, check=True,
    )
    for name in GENERATED:
        fresh = (tmp_path / "logit_service" / "v1" / name).read_text()
        checked_in = (ROOT / "logit_service" / "v1" / name).read_text()
        assert fresh == checked_in, f"logit_service/v1/{name} drifted from the .proto: run scripts/gen_protos.sh"


def test_generated_imports_follow_the_package_path():
    grpc_module = (ROOT / "logit_service" / "v1" / "logit_service_pb2_grpc.py").read_text()
    assert "from logit_service.v1 import logit_service_pb2" in grpc_module

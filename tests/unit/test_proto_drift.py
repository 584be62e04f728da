"""The checked-in generated code is exactly what the .proto generates, and the .proto ships with it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "clients" / "logit_common" / "v1"
GENERATED = ["logit_service_pb2.py", "logit_service_pb2.pyi", "logit_service_pb2_grpc.py"]


def test_generated_code_matches_the_proto(tmp_path):
    (tmp_path / "logit_common" / "v1").mkdir(parents=True)
    shutil.copy(PACKAGE / "logit_service.proto", tmp_path / "logit_common" / "v1")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.", "--pyi_out=.", "--grpc_python_out=.",
         "logit_common/v1/logit_service.proto"],
        cwd=tmp_path, check=True,
    )
    for name in GENERATED:
        fresh = (tmp_path / "logit_common" / "v1" / name).read_text()
        checked_in = (PACKAGE / name).read_text()
        assert fresh == checked_in, f"logit_common/v1/{name} drifted from the .proto: run scripts/gen_protos.sh"


def test_generated_imports_follow_the_package_path():
    grpc_module = (PACKAGE / "logit_service_pb2_grpc.py").read_text()
    assert "from logit_common.v1 import logit_service_pb2" in grpc_module


def test_the_wire_names_and_the_other_languages_options():
    from logit_common.v1 import logit_service_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["LogitService"]
    assert service.full_name == "logit_service.v1.LogitService"  # what older clients and servers call
    options = pb.DESCRIPTOR.GetOptions()
    assert options.go_package == "logit_service/v1;logitservicev1"
    assert options.java_package == "logit_service.v1" and options.java_multiple_files


def test_the_old_module_paths_are_the_shared_modules():
    import logit_common.v1.logit_service_pb2 as shared_pb
    import logit_common.v1.logit_service_pb2_grpc as shared_grpc
    from logit_service.v1 import logit_service_pb2, logit_service_pb2_grpc

    assert logit_service_pb2 is shared_pb and logit_service_pb2_grpc is shared_grpc

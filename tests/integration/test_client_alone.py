"""The client stands alone: it publishes and scores against a real server in another process while the
server package cannot be imported, names the extra to install when an optional part is missing, reads
the replicas servers advertise in Redis by itself, and installs into a fresh virtual environment from
clients/ with nothing of the server in it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import save_file

from logit_client import LogitClient, ReplicaRouter
from logit_common.types import ReplicaRecord
from logit_service.registry.redis import RedisRegistry
from tests.helpers import random_tokens
from tests.server_process import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "standalone_client_check.py"
TOKENS = random_tokens(24, seed=11)


@pytest.fixture
def inputs(tmp_path, trained) -> dict[str, Path]:
    """What the standalone script publishes and scores: version 0's weights, its config, the tokens."""
    paths = {"weights": tmp_path / "v0.safetensors", "config": tmp_path / "config.json", "tokens": tmp_path / "tokens.json"}
    save_file({k: v.contiguous() for k, v in trained.states[0].items()}, str(paths["weights"]))
    paths["config"].write_text(json.dumps(trained.config))
    paths["tokens"].write_text(json.dumps(TOKENS.tolist()))
    return paths


@pytest.fixture
def server(snapshot_dir):
    with ServerProcess(snapshot_dir) as process:
        yield process


def _run_script(python: str, server, snapshot_dir, inputs, out: Path, *extra: str, env: dict | None = None) -> dict:
    args = [python, str(SCRIPT), server.address, str(snapshot_dir), *(str(inputs[k]) for k in ("weights", "config", "tokens")), str(out), *extra]
    done = subprocess.run(args, env=env, cwd=out.parent, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(out.read_text())


def _check_published_and_scored(report: dict, server, trained) -> None:
    assert report["server_modules"] == []
    assert report["latest_version"] == 0
    with LogitClient(server.address) as client:
        assert report["digest"] == client.get_version(0).digest
    np.testing.assert_allclose(report["logprobs"], trained.reference(0, TOKENS)[1:], rtol=0, atol=1e-5)


def _client_only_env() -> dict:
    """Only clients/ on the path (the server's source tree is not), plus the block in the script."""
    return dict(os.environ, PYTHONPATH=str(ROOT / "clients"))


def test_the_client_publishes_and_scores_with_the_server_package_blocked(server, snapshot_dir, inputs, trained, tmp_path):
    report = _run_script(sys.executable, server, snapshot_dir, inputs, tmp_path / "out.json", "--block", "logit_service", env=_client_only_env())
    _check_published_and_scored(report, server, trained)
    assert "logit_client.discovery" in report["modules"] and "logit_common.v1.logit_service_pb2" in report["modules"]
    assert report["client_file"].startswith(str(ROOT / "clients"))


def test_each_optional_part_names_the_extra_that_installs_it(snapshot_dir, tmp_path):
    out = tmp_path / "out.json"
    blocks = [arg for name in ("logit_service", "torch", "safetensors", "redis") for arg in ("--block", name)]
    args = [sys.executable, str(SCRIPT), "127.0.0.1:1", str(snapshot_dir), "-", "-", "-", str(out), *blocks, "--extras-missing"]
    done = subprocess.run(args, env=_client_only_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report["server_modules"] == []
    assert "redis" in report["messages"]["routing"] and "[routing]" in report["messages"]["routing"]
    assert "safetensors" in report["messages"]["publish"] and "[publish]" in report["messages"]["publish"]
    assert "torch" in report["messages"]["loss"] and "torch" in report["messages"]["ewma"]


def test_the_router_reads_the_replicas_servers_advertise(redis_url):
    # The server's registry writes the lease; the client reads it with its own reader (no server code).
    registry = RedisRegistry(redis_url, namespace="alone")
    record = ReplicaRecord(replica_id="r1", address="127.0.0.1:5001", resident_versions=(3, 4), started_at=12.5)
    try:
        registry.heartbeat(record, ttl_s=60)
        router = ReplicaRouter.from_redis(redis_url, namespace="alone", refresh_s=0.0)
        try:
            assert router.replicas() == [record]
            assert router({4}) == ["127.0.0.1:5001"] and router({9}) == []
            registry.deregister("r1")
            assert router.replicas() == []
        finally:
            router.close()
    finally:
        registry.close()


@pytest.mark.slow
def test_a_fresh_venv_installs_the_client_alone_and_publishes_and_scores(server, snapshot_dir, inputs, trained, tmp_path):
    # Nothing of this checkout on the path: the venv sees only what pip installed into it.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), env=env, cwd=tmp_path, capture_output=True, text=True, **kwargs)

    venv = tmp_path / "venv"
    made = run(sys.executable, "-m", "venv", str(venv), timeout=300)
    assert made.returncode == 0, made.stderr
    python = str(venv / "bin" / "python")
    # pip may take torch and the rest from the machine's wheel directory and cache; nothing else is set
    # up. --no-compile: byte-compiling torch's sources would be most of the install's time.
    # From a copy: pip builds a local directory in place, and its build/ and egg-info must not land in
    # the checkout (a stale build/lib would leak deleted modules into later wheels).
    source = tmp_path / "clients"
    shutil.copytree(ROOT / "clients", source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    # torch pinned to the build this suite runs on: unpinned, `torch>=2.4` would make pip fetch the newest
    # release (on Linux a multi-GB CUDA build) instead of reusing the wheel already downloaded or on disk.
    import torch

    install = run(python, "-m", "pip", "install", "-q", "--no-compile", f"{source}[publish]",
                  f"torch=={torch.__version__}", timeout=1800)
    assert install.returncode == 0, install.stdout + install.stderr

    files = run(python, "-m", "pip", "show", "-f", "logit-client", timeout=120).stdout
    assert "logit_common/v1/logit_service.proto" in files and "logit_client/py.typed" in files
    assert "logit_service/" not in files
    probe = run(python, "-c", "import logit_service", timeout=120)
    assert probe.returncode != 0 and "No module named 'logit_service'" in probe.stderr

    report = _run_script(python, server, snapshot_dir, inputs, tmp_path / "out.json", env=env)
    _check_published_and_scored(report, server, trained)
    assert report["client_file"].startswith(str(venv))
    from logit_common import __version__

    assert report["version"] == __version__

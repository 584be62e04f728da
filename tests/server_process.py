"""Runs `logit-service serve` as a real child process and waits for it through the health service."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.redis_server import free_port


class ServerProcess:
    def __init__(
        self, snapshot_dir: Path, *extra_args: str, port: int | None = None, prefix: tuple[str, ...] = ()
    ) -> None:
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.args = [
            *prefix,  # e.g. setpriv, to run with fewer privileges
            sys.executable, "-m", "logit_service.cli", "--log-level", "WARNING", "serve",
            "--host", "127.0.0.1", "--port", str(self.port), "--snapshot-dir", str(snapshot_dir), *extra_args,
        ]
        self.process: subprocess.Popen | None = None

    # A server child imports torch, transformers and grpc before it listens: seconds on an idle machine,
    # over a minute on two cores that other processes keep busy. The wait ends as soon as it is healthy.
    def start(self, timeout_s: float = 180.0) -> "ServerProcess":
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path.cwd()), str(Path.cwd() / "clients")]))
        self.process = subprocess.Popen(self.args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited early:\n{self.process.stdout.read()}")
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return self
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"server on {self.address} not healthy after {timeout_s} s")
                time.sleep(0.05)  # between health polls, not as the readiness check itself

    def stop(self) -> int:
        if self.process is None:
            return 0
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.process = None
        return code

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

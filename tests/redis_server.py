"""Starts and stops a real `redis-server` subprocess on a free 127.0.0.1 port, for tests.

Without the binary a test fails, unless LOGIT_TESTS_ALLOW_NO_REDIS=1 says skipping is acceptable.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

_READY_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0
# Another process may take the port between our probe and redis-server's bind; retry that race.
_START_ATTEMPTS = 3


@dataclass
class RedisServer:
    process: subprocess.Popen
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def redis_server_binary() -> str:
    """The `redis-server` path; fails the test (or skips, when allowed) if it is not installed."""
    path = shutil.which("redis-server")
    if path is not None:
        return path
    if os.environ.get("LOGIT_TESTS_ALLOW_NO_REDIS") == "1":
        pytest.skip("redis-server is not on PATH and LOGIT_TESTS_ALLOW_NO_REDIS=1")
    pytest.fail("redis-server is not on PATH; install it (apt-get install -y redis-server) "
                "or set LOGIT_TESTS_ALLOW_NO_REDIS=1 to skip the Redis tests")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_once(binary: str, log, port: int | None = None) -> RedisServer | None:
    port = port or free_port()
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    server = RedisServer(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), port)
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5, socket_timeout=0.5)
    deadline = time.monotonic() + _READY_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                return None  # exited early, most likely the port was taken
            try:
                if client.ping():
                    return server
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                time.sleep(0.02)  # poll interval between readiness probes
    finally:
        client.close()
    server.stop()
    pytest.fail(f"redis-server on port {port} did not answer PING within {_READY_TIMEOUT_S} s")


@contextlib.contextmanager
def running_redis_server(port: int | None = None) -> Iterator[RedisServer]:
    """A started redis-server without persistence, stopped on exit; its log is shown if it never became
    ready. `port` restarts one where a stopped one listened: an empty Redis at the same URL."""
    binary = redis_server_binary()
    with tempfile.TemporaryFile() as log:
        for _ in range(_START_ATTEMPTS):
            server = _start_once(binary, log, port)
            if server is not None:
                break
        else:
            log.seek(0)
            output = log.read().decode(errors="replace")[-4000:]
            pytest.fail(f"redis-server exited before becoming ready {_START_ATTEMPTS} times:\n{output}")
        try:
            yield server
        finally:
            server.stop()

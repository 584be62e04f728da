"""Every server the tests start listens on 127.0.0.1 only: the in-process server and its metrics port,
`logit-service serve` as a child process, and redis-server. Read from the kernel's socket tables."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.redis_server import running_redis_server
from tests.server_process import ServerProcess

LISTEN = "0A"
# 127.0.0.1 as /proc/net/tcp writes it (little-endian hex), and as IPv4-mapped IPv6 (::ffff:127.0.0.1),
# which gRPC binds for "127.0.0.1"; the wildcard would be all zeros.
LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F"}

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/net/tcp")


def _listening_addresses(port: int) -> list[str]:
    """Local addresses of the sockets listening on `port`, over IPv4 and IPv6."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if fields[3] == LISTEN and int(port_hex, 16) == port:
                found.append(address)
    return found


def test_servers_started_by_the_tests_listen_on_loopback_only(make_server, snapshot_dir):
    server = make_server(snapshot_dir, metrics_port=0)
    grpc_port = int(server.address.rsplit(":", 1)[1])
    ports = {"gRPC": grpc_port, "metrics": server.running.metrics_port}
    with running_redis_server() as redis_server:
        ports["redis-server"] = redis_server.port
        child = ServerProcess(snapshot_dir / "child").start(timeout_s=180)
        try:
            ports["serve process"] = int(child.address.rsplit(":", 1)[1])
            for name, port in ports.items():
                addresses = _listening_addresses(port)
                assert addresses, f"nothing listens on the {name} port {port}"
                assert set(addresses) <= LOOPBACK, f"the {name} port {port} listens on {addresses}"
        finally:
            child.stop()

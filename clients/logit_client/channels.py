"""gRPC channel options and the per-target pool of channels and stubs (sync or asyncio).

Channels are opened on first use, so a client naming many replicas costs nothing until it calls them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from logit_common.v1 import logit_service_pb2_grpc as pb_grpc

KEEPALIVE_TIME_MS = 60_000
"""Ping an idle-looking connection this often during a call, so load balancers do not cut long Scores.

Servers must accept it: grpc.http2.min_ping_interval_without_data_ms <= this, or they answer GOAWAY
"too_many_pings".
"""
KEEPALIVE_TIMEOUT_MS = 20_000
MAX_RECONNECT_BACKOFF_MS = 5_000
"""A restarted replica is picked up within seconds rather than gRPC's default two minutes."""


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        # Pings only while a call is open: an idle client must not wake every replica it knows.
        ("grpc.keepalive_permit_without_calls", 0),
        # Keep pinging through a long compute with no data frames (the default stops after 2 pings).
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
        # The client retries itself, on another replica and within its own deadline.
        ("grpc.enable_retries", 0),
    ]


def tls_credentials(
    ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None
) -> grpc.ChannelCredentials:
    """TLS channel credentials from PEM files, for `LogitClient(..., credentials=...)`.

    `ca_file` is the CA that signed the server's certificate (the system's roots when omitted);
    `cert_file` and `key_file` are this client's certificate for a server that requires mutual TLS.
    """
    if (cert_file is None) != (key_file is None):
        raise ValueError("cert_file and key_file go together")

    def read(path: str | None) -> bytes | None:
        if path is None:
            return None
        with open(path, "rb") as f:
            return f.read()

    return grpc.ssl_channel_credentials(
        root_certificates=read(ca_file), private_key=read(key_file), certificate_chain=read(cert_file)
    )


STUB_FACTORIES: dict[str, Callable[[Any], Any]] = {
    "logit": pb_grpc.LogitServiceStub,
    "health": health_pb2_grpc.HealthStub,
}


class ChannelPool:
    """One channel per target and one stub per service on it; `aio` picks grpc.aio channels."""

    def __init__(
        self,
        max_message_bytes: int,
        *,
        aio: bool = False,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._options = channel_options(max_message_bytes)
        self._module: Any = grpc.aio if aio else grpc
        self._credentials = credentials
        self._channels: dict[str, Any] = {}
        self._stubs: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self._closed = False

    def stub(self, target: str, service: str) -> Any:
        with self._lock:
            if self._closed:
                raise RuntimeError("the client is closed")
            stub = self._stubs.get((target, service))
            if stub is None:
                channel = self._channels.get(target)
                if channel is None:
                    channel = self._channels[target] = self._open(target)
                stub = self._stubs[(target, service)] = STUB_FACTORIES[service](channel)
            return stub

    def _open(self, target: str) -> Any:
        if self._credentials is None:
            return self._module.insecure_channel(target, options=self._options)
        return self._module.secure_channel(target, self._credentials, options=self._options)

    def take_all(self) -> list[Any]:
        """Marks the pool closed and hands over its channels for the caller to close."""
        with self._lock:
            self._closed = True
            channels = list(self._channels.values())
            self._channels.clear()
            self._stubs.clear()
        return channels

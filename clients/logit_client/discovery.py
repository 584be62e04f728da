"""Replica discovery and version-affine routing from the registry's replica leases.

Each replica advertises, under a TTL lease, its address and the versions it holds in RAM. Sending a
version where it is already resident avoids a disk load and a weight swap on the critical path. Any
live replica can still load any retained version, so the others remain as fallbacks.

The client reads those leases itself (`RedisReplicaDirectory`, read-only, the keys of
`logit_common.replicas`); it needs redis, the `routing` extra, and nothing of the server.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

from logit_common.errors import RegistryError
from logit_common.extras import missing_extra
from logit_common.replicas import decode_replica, replica_key, replicas_key
from logit_common.types import ReplicaRecord

REDIS_TIMEOUT_S = 5.0
"""Bounded socket waits: a hung Redis turns into a RegistryError, not a call stuck forever."""


class ReplicaSource(Protocol):
    """Anything that lists live replicas: a `RedisReplicaDirectory`, or a server-side registry."""

    def replicas(self) -> list[ReplicaRecord]: ...

    def close(self) -> None: ...


class RedisReplicaDirectory:
    """The live replicas advertised in a Redis registry. Only reads: expired ids are skipped here and
    left for the replicas themselves to clean up."""

    def __init__(self, url: str, *, namespace: str = "logit", client: Any = None) -> None:
        if not namespace:
            raise ValueError("registry namespace must be non-empty")
        try:
            import redis
        except ModuleNotFoundError as e:
            raise missing_extra(e, extra="routing", needed_for="ReplicaRouter.from_redis") from e
        self._errors = (redis.RedisError,)
        self._owns_client = client is None
        self._client = client if client is not None else redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
        )
        self._namespace = namespace

    def replicas(self) -> list[ReplicaRecord]:
        try:
            ids = sorted(self._client.smembers(replicas_key(self._namespace)))
            keys = [replica_key(self._namespace, i) for i in ids]
            values = self._client.mget(keys) if keys else []
        except self._errors as exc:
            # The exception's type, never its text: a connection error's text can carry the URL.
            raise RegistryError(f"cannot list replicas from the Redis registry ({type(exc).__name__})") from exc
        return [decode_replica(key, value) for key, value in zip(keys, values) if value is not None]

    def close(self) -> None:
        if self._owns_client:
            self._client.close()


class ReplicaRouter:
    """A `Router` for `LogitClient(router=...)`: live replicas, those holding the call's versions first."""

    def __init__(self, registry: ReplicaSource, *, refresh_s: float = 1.0) -> None:
        self.registry = registry
        self.refresh_s = refresh_s
        self._replicas: list[ReplicaRecord] = []
        self._fetched_at = float("-inf")
        self._lock = threading.Lock()

    @classmethod
    def from_redis(cls, url: str, *, namespace: str = "logit", refresh_s: float = 1.0) -> "ReplicaRouter":
        return cls(RedisReplicaDirectory(url, namespace=namespace), refresh_s=refresh_s)

    def replicas(self) -> list[ReplicaRecord]:
        """Live replicas, re-read from the registry at most every `refresh_s` seconds."""
        with self._lock:
            if time.monotonic() - self._fetched_at >= self.refresh_s:
                self._replicas = sorted(self.registry.replicas(), key=lambda r: r.replica_id)
                self._fetched_at = time.monotonic()
            return list(self._replicas)

    def addresses(self) -> list[str]:
        addresses = [r.address for r in self.replicas()]
        if not addresses:
            raise LookupError("no live replica is registered")
        return addresses

    def __call__(self, policy_versions: set[int]) -> list[str]:
        """Addresses ordered by how many of the call's versions each replica holds resident."""
        replicas = self.replicas()
        held = {r.address: len(policy_versions & set(r.resident_versions)) for r in replicas}
        return [a for a in sorted(held, key=lambda a: -held[a]) if held[a] > 0]

    def close(self) -> None:
        self.registry.close()

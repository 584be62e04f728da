"""Replica discovery and version-affine routing from the registry's replica leases.

Each replica advertises, under a TTL lease, its address and the versions it holds in RAM. Sending a
version where it is already resident avoids a disk load and a weight swap on the critical path. Any
live replica can still load any retained version, so the others remain as fallbacks.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from logit_service.registry.base import Registry
    from logit_service.types import ReplicaRecord


class ReplicaRouter:
    """A `Router` for `LogitClient(router=...)`: live replicas, those holding the call's versions first."""

    def __init__(self, registry: "Registry", *, refresh_s: float = 1.0) -> None:
        self.registry = registry
        self.refresh_s = refresh_s
        self._replicas: list[ReplicaRecord] = []
        self._fetched_at = float("-inf")
        self._lock = threading.Lock()

    @classmethod
    def from_redis(cls, url: str, *, namespace: str = "logit", refresh_s: float = 1.0) -> "ReplicaRouter":
        from logit_service.registry.redis import RedisRegistry

        return cls(RedisRegistry(url, namespace=namespace), refresh_s=refresh_s)

    def replicas(self) -> list["ReplicaRecord"]:
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

"""The in-process registry: the single-node default, with the same semantics as `RedisRegistry`.

It owns nothing durable: a restarted process starts empty, and the snapshot store rebuilds it from the
snapshot directory (versions from their directories, leases from their files beside the snapshots).
Replica leases expire on `time.monotonic`.
"""

from __future__ import annotations

import dataclasses
import threading
import time

from logit_service.errors import VersionConflict
from logit_service.types import ReplicaRecord, VersionRecord, VersionState


class InMemoryRegistry:
    """A `Registry` held in dicts behind one lock, so server threads may share it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: dict[int, VersionRecord] = {}
        self._latest: int | None = None
        self._ewma: VersionRecord | None = None
        # replica_id -> (record, monotonic deadline of its lease)
        self._replicas: dict[str, tuple[ReplicaRecord, float]] = {}
        # policy_version -> {holder -> monotonic deadline}
        self._leases: dict[int, dict[str, float]] = {}

    def publish(self, record: VersionRecord) -> bool:
        with self._lock:
            stored = self._versions.get(record.policy_version)
            if stored is not None:
                if stored.digest == record.digest:
                    return False
                raise VersionConflict(
                    f"policy_version {record.policy_version} is already published with digest "
                    f"{stored.digest}; refusing digest {record.digest}"
                )
            self._versions[record.policy_version] = record
            if self._latest is None or record.policy_version > self._latest:
                self._latest = record.policy_version
            return True

    def get(self, policy_version: int) -> VersionRecord | None:
        with self._lock:
            return self._versions.get(policy_version)

    def list(self, include_evicted: bool = False) -> list[VersionRecord]:
        with self._lock:
            records = [self._versions[v] for v in sorted(self._versions)]
        if include_evicted:
            return records
        return [r for r in records if r.state is not VersionState.EVICTED]

    def latest(self) -> int | None:
        with self._lock:
            return self._latest

    def mark_evicted(self, policy_versions: list[int]) -> None:
        with self._lock:
            for v in policy_versions:
                # Unknown versions are ignored, as in Redis: eviction never invents a record.
                if v in self._versions:
                    self._versions[v] = dataclasses.replace(self._versions[v], state=VersionState.EVICTED)

    def put_ewma(self, record: VersionRecord) -> None:
        with self._lock:
            self._ewma = record

    def get_ewma(self) -> VersionRecord | None:
        with self._lock:
            return self._ewma

    def lease(self, policy_version: int, holder: str, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError(f"lease ttl_s must be positive, got {ttl_s}")
        with self._lock:
            self._leases.setdefault(int(policy_version), {})[holder] = time.monotonic() + ttl_s

    def release(self, policy_version: int, holder: str) -> None:
        with self._lock:
            holders = self._leases.get(int(policy_version), {})
            holders.pop(holder, None)
            if not holders:
                self._leases.pop(int(policy_version), None)

    def leased_versions(self) -> dict[int, float]:
        now = time.monotonic()
        with self._lock:
            out = {}
            for v in list(self._leases):
                live = {h: t for h, t in self._leases[v].items() if t > now}
                if live:
                    self._leases[v] = live
                    out[v] = max(live.values()) - now
                else:
                    del self._leases[v]
            return out

    def heartbeat(self, replica: ReplicaRecord, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError(f"heartbeat ttl_s must be positive, got {ttl_s}")
        with self._lock:
            self._replicas[replica.replica_id] = (replica, time.monotonic() + ttl_s)

    def deregister(self, replica_id: str) -> None:
        with self._lock:
            self._replicas.pop(replica_id, None)

    def replicas(self) -> list[ReplicaRecord]:
        now = time.monotonic()
        with self._lock:
            # Expired leases are dropped lazily here, like the Redis id set.
            for replica_id in [i for i, (_, deadline) in self._replicas.items() if deadline <= now]:
                del self._replicas[replica_id]
            return [self._replicas[i][0] for i in sorted(self._replicas)]

    def close(self) -> None:
        """Nothing to release; present for the `Registry` contract."""

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
from logit_service.registry.base import holder_limit
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
        # policy_version -> {holder -> monotonic deadline}: a holder is found by key, never by a walk
        self._leases: dict[int, dict[str, float]] = {}
        # policy_version -> the last deadline among its holders
        self._last_expiry: dict[int, float] = {}

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

    def lease(self, policy_version: int, holder: str, ttl_s: float, max_holders: int | None = None) -> None:
        if ttl_s <= 0:
            raise ValueError(f"lease ttl_s must be positive, got {ttl_s}")
        v = int(policy_version)
        now = time.monotonic()
        with self._lock:
            holders = self._leases.setdefault(v, {})
            if max_holders is not None and holder not in holders and len(holders) >= max_holders:
                for lapsed in [h for h, t in holders.items() if t <= now]:  # only when full: bounded work
                    del holders[lapsed]
                if len(holders) >= max_holders:
                    raise holder_limit(v, max_holders)
            previous, holders[holder] = holders.get(holder), now + ttl_s
            last = self._last_expiry.get(v)
            if last is None or now + ttl_s >= last:
                self._last_expiry[v] = now + ttl_s
            elif previous == last:  # the holder that set the last expiry shortened its lease
                self._last_expiry[v] = max(holders.values())

    def release(self, policy_version: int, holder: str) -> None:
        v = int(policy_version)
        with self._lock:
            holders = self._leases.get(v, {})
            holders.pop(holder, None)
            if holders:
                self._last_expiry[v] = max(holders.values())  # one version's holders, bounded
            else:
                self._leases.pop(v, None)
                self._last_expiry.pop(v, None)

    def leased_versions(self) -> dict[int, float]:
        """Reads one expiry per version (the last of its holders'), never every holder."""
        now = time.monotonic()
        with self._lock:
            for v in [v for v, t in self._last_expiry.items() if t <= now]:  # every holder has lapsed
                del self._last_expiry[v]
                self._leases.pop(v, None)
            return {v: t - now for v, t in self._last_expiry.items()}

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

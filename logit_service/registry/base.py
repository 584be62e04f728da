"""The registry contract: version metadata and live replicas, shared by every server of a deployment.

Implementations: `memory.InMemoryRegistry` (single node, the default) and `redis.RedisRegistry`.
Snapshot bytes never live here, only where they are and what they must hash to.

A registry may lose everything (the in-process one on every restart, a Redis without persistence): the
snapshot store never lets that delete what it was asked to keep. Leases are mirrored as files beside
the snapshots (`snapshots.leases`), versions are re-registered from their `v%08d` directories, and the
EWMA record from its snapshot; a lost eviction mark is re-derived by retention. What a registry holds
durably (a persistent Redis) only saves that work.
"""

from __future__ import annotations

from typing import Protocol

from logit_service.errors import LeaseLimit
from logit_service.types import ReplicaRecord, VersionRecord


def holder_limit(policy_version: int, max_holders: int | None) -> LeaseLimit:
    return LeaseLimit(
        f"version {policy_version} is already leased by {max_holders} holders, the limit per version "
        f"(renewals of a held lease are always accepted; release leases no longer needed)"
    )


class Registry(Protocol):
    def publish(self, record: VersionRecord) -> bool:
        """Registers a version atomically; True if new, False if the same digest was already there.

        Raises `VersionConflict` when the version exists with another digest. `latest` only moves up.
        """

    def get(self, policy_version: int) -> VersionRecord | None: ...

    def list(self, include_evicted: bool = False) -> list[VersionRecord]:
        """All known versions, ascending by version."""

    def latest(self) -> int | None: ...

    def mark_evicted(self, policy_versions: list[int]) -> None:
        """Flags versions as fallen out of the retention window (their records stay, for NOT_FOUND vs
        FAILED_PRECONDITION answers)."""

    def put_ewma(self, record: VersionRecord) -> None:
        """Replaces the EWMA pseudo-version's record."""

    def get_ewma(self) -> VersionRecord | None: ...

    def lease(self, policy_version: int, holder: str, ttl_s: float, max_holders: int | None = None) -> None:
        """Creates or renews `holder`'s lease on a version: while any lease on it is live, retention
        keeps the version even outside the window (a partial rollout still needs it). The store also
        writes each lease as a file beside the snapshots, which outlives the registry's copy. A new
        holder of a version that already has `max_holders` live ones raises `LeaseLimit`; the check and
        the lease are one atomic step, and a holder is found without walking the others."""

    def release(self, policy_version: int, holder: str) -> None:
        """Ends `holder`'s lease on a version (a no-op when it holds none)."""

    def leased_versions(self) -> dict[int, float]:
        """Versions with at least one live lease → seconds until the last of them expires."""

    def heartbeat(self, replica: ReplicaRecord, ttl_s: float) -> None:
        """Creates or refreshes a replica's lease, with the versions it holds resident."""

    def deregister(self, replica_id: str) -> None: ...

    def replicas(self) -> list[ReplicaRecord]:
        """Replicas whose lease has not expired."""

    def close(self) -> None: ...

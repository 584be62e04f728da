"""Behavioural checks every `Registry` must pass, shared by the in-memory and the Redis test files.

Each check takes a fresh, empty registry and raises AssertionError on a violation.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time

import pytest

from logit_service.errors import LeaseLimit, VersionConflict
from logit_service.registry.base import Registry
from logit_service.types import ReplicaRecord, VersionRecord, VersionState

_EXPIRY_WAIT_S = 5.0


def make_record(policy_version: int, **overrides) -> VersionRecord:
    fields = dict(
        policy_version=policy_version,
        snapshot_path=f"/snapshots/v{policy_version:06d}",
        digest=f"sha256:{policy_version:064x}",
        model_config_hash="cfg-3f9a",
        dtype="bfloat16",
        # Many significant digits, so a lossy float encoding would show.
        created_at=1712345678.123456 + policy_version / 7,
    )
    fields.update(overrides)
    return VersionRecord(**fields)


def assert_same_record(got: VersionRecord | None, expected: VersionRecord) -> None:
    """Equal, and with the declared types: equality alone accepts 3.0 for 3 and "retained" for the enum."""
    assert got == expected
    assert type(got.policy_version) is int
    assert type(got.created_at) is float
    assert type(got.state) is VersionState
    assert type(got.covers_versions) is tuple
    assert all(type(v) is int for v in got.covers_versions)


def check_empty_registry(registry: Registry) -> None:
    assert registry.list(include_evicted=True) == []
    assert registry.latest() is None
    assert registry.get(1) is None
    assert registry.get_ewma() is None
    assert registry.replicas() == []


def check_publish_roundtrip(registry: Registry) -> None:
    # 10 before 2 in string order: the listing must sort numerically.
    records = [make_record(10), make_record(2, covers_versions=(1, 2)), make_record(3)]
    for record in records:
        assert registry.publish(record) is True
    for record in records:
        assert_same_record(registry.get(record.policy_version), record)
    listed = registry.list()
    assert [r.policy_version for r in listed] == [2, 3, 10]
    for got, expected in zip(listed, sorted(records, key=lambda r: r.policy_version)):
        assert_same_record(got, expected)
    assert registry.latest() == 10
    assert registry.get(4) is None


def check_duplicate_same_digest_changes_nothing(registry: Registry) -> None:
    original = make_record(5)
    assert registry.publish(original) is True
    again = dataclasses.replace(original, snapshot_path="/elsewhere/v5", created_at=original.created_at + 60)
    assert registry.publish(again) is False
    assert_same_record(registry.get(5), original)
    assert registry.list() == [original]
    assert registry.latest() == 5


def check_conflicting_digest_raises_and_keeps_record(registry: Registry) -> None:
    original = make_record(5)
    registry.publish(original)
    clash = dataclasses.replace(original, digest="sha256:" + "f" * 64, snapshot_path="/other/v5")
    with pytest.raises(VersionConflict) as info:
        registry.publish(clash)
    message = str(info.value)
    assert re.search(r"\b5\b", message), message  # the version, standalone, not inside a digest
    assert original.digest in message and clash.digest in message
    assert_same_record(registry.get(5), original)
    assert registry.list() == [original]


def check_latest_is_monotone(registry: Registry) -> None:
    registry.publish(make_record(5))
    assert registry.publish(make_record(3)) is True
    assert registry.latest() == 5
    assert [r.policy_version for r in registry.list()] == [3, 5]
    registry.publish(make_record(6))
    assert registry.latest() == 6


def check_mark_evicted(registry: Registry) -> None:
    for v in (1, 2, 3):
        registry.publish(make_record(v))
    registry.mark_evicted([1, 3, 99])
    registry.mark_evicted([])
    assert [r.policy_version for r in registry.list()] == [2]
    everything = registry.list(include_evicted=True)
    assert [(r.policy_version, r.state) for r in everything] == [
        (1, VersionState.EVICTED),
        (2, VersionState.RETAINED),
        (3, VersionState.EVICTED),
    ]
    # Only the state changes; the record stays so callers can tell "evicted" from "never published".
    assert_same_record(registry.get(1), dataclasses.replace(make_record(1), state=VersionState.EVICTED))
    assert registry.get(99) is None
    assert registry.latest() == 3
    # An evicted version is still published: republishing it is a duplicate, not a new version.
    assert registry.publish(make_record(1)) is False


def check_ewma_roundtrip(registry: Registry) -> None:
    first = make_record(4, snapshot_path="/snapshots/ewma", digest="sha256:ewma-1", covers_versions=(2, 3, 4))
    registry.put_ewma(first)
    assert_same_record(registry.get_ewma(), first)
    second = make_record(5, snapshot_path="/snapshots/ewma", digest="sha256:ewma-2", covers_versions=(3, 4, 5))
    registry.put_ewma(second)
    assert_same_record(registry.get_ewma(), second)
    # The pseudo-version lives beside the real ones, never among them.
    assert registry.list(include_evicted=True) == []
    assert registry.latest() is None


def check_replica_leases(registry: Registry) -> None:
    a = ReplicaRecord("replica-a", "10.0.0.1:50051", resident_versions=(1, 2), backend="torch", started_at=1712.5)
    b = ReplicaRecord("replica-b", "10.0.0.2:50051", resident_versions=(), backend="vllm", started_at=1713.25)
    registry.heartbeat(a, ttl_s=0.5)
    assert registry.replicas() == [a]
    refreshed = dataclasses.replace(a, resident_versions=(2, 3))
    registry.heartbeat(refreshed, ttl_s=60)
    registry.heartbeat(b, ttl_s=0.5)
    assert registry.replicas() == [refreshed, b]
    deadline = time.monotonic() + _EXPIRY_WAIT_S
    while b in registry.replicas():
        assert time.monotonic() < deadline, f"a 0.5 s lease was still live after {_EXPIRY_WAIT_S} s"
        time.sleep(0.02)  # poll interval while waiting for the lease to lapse
    # a's first 0.5 s lease began before b's and has lapsed too: only the refresh keeps it live.
    (live,) = registry.replicas()
    assert live == refreshed
    assert type(live.resident_versions) is tuple and type(live.started_at) is float


def check_version_leases(registry: Registry) -> None:
    assert registry.leased_versions() == {}
    registry.lease(3, "rollout-1", ttl_s=60)
    registry.lease(3, "rollout-2", ttl_s=0.5)
    registry.lease(5, "rollout-2", ttl_s=0.5)
    leased = registry.leased_versions()
    assert set(leased) == {3, 5}
    assert 30 < leased[3] <= 60 and 0 < leased[5] <= 0.5
    registry.release(3, "rollout-1")  # rollout-2 still holds 3
    registry.release(7, "nobody")  # releasing nothing is a no-op
    assert set(registry.leased_versions()) == {3, 5}
    deadline = time.monotonic() + _EXPIRY_WAIT_S
    while registry.leased_versions():
        assert time.monotonic() < deadline, f"0.5 s version leases still live after {_EXPIRY_WAIT_S} s"
        time.sleep(0.02)  # poll interval while waiting for the leases to lapse
    registry.lease(5, "rollout-3", ttl_s=60)  # a lapsed version can be leased again
    assert set(registry.leased_versions()) == {5}
    with pytest.raises(ValueError):
        registry.lease(5, "rollout-3", ttl_s=0)


def check_lease_holders_are_bounded_per_version(registry: Registry) -> None:
    registry.lease(4, "a", ttl_s=60, max_holders=2)
    registry.lease(4, "b", ttl_s=0.3, max_holders=2)
    registry.lease(4, "a", ttl_s=60, max_holders=2)  # a renewal is no new holder
    registry.lease(6, "c", ttl_s=60, max_holders=2)  # the bound is per version
    with pytest.raises(LeaseLimit, match="2 holders"):
        registry.lease(4, "c", ttl_s=60, max_holders=2)
    registry.release(4, "a")
    registry.lease(4, "c", ttl_s=60, max_holders=2)  # a released slot is free again
    deadline = time.monotonic() + _EXPIRY_WAIT_S
    while True:  # b's lease lapses: its slot is free without a release
        try:
            registry.lease(4, "d", ttl_s=60, max_holders=2)
            break
        except LeaseLimit:
            assert time.monotonic() < deadline, f"a 0.3 s lease still held its slot after {_EXPIRY_WAIT_S} s"
            time.sleep(0.02)  # poll interval while waiting for the lease to lapse
    assert set(registry.leased_versions()) == {4, 6}


def check_a_shorter_renewal_by_one_holder_keeps_another_holders_longer_lease(registry: Registry) -> None:
    registry.lease(2, "long", ttl_s=60)
    registry.lease(2, "short", ttl_s=0.2)
    registry.lease(2, "short", ttl_s=0.2)
    time.sleep(1.5)  # past the short lease and the second of slack a store key gets beyond it
    assert 50 < registry.leased_versions()[2] <= 60


def check_deregister(registry: Registry) -> None:
    a = ReplicaRecord("replica-a", "10.0.0.1:50051")
    b = ReplicaRecord("replica-b", "10.0.0.2:50051")
    registry.heartbeat(a, ttl_s=60)
    registry.heartbeat(b, ttl_s=60)
    registry.deregister("replica-a")
    registry.deregister("never-registered")
    assert registry.replicas() == [b]


def check_heartbeat_rejects_nonpositive_ttl(registry: Registry) -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        registry.heartbeat(ReplicaRecord("replica-a", "10.0.0.1:50051"), ttl_s=0)
    assert registry.replicas() == []


def check_concurrent_publishers_one_wins(registry: Registry) -> None:
    n = 8
    barrier = threading.Barrier(n)
    outcomes: list[object] = [None] * n

    def publish(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = registry.publish(make_record(7, digest=f"sha256:writer-{i}"))
        except VersionConflict as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, outcome in enumerate(outcomes) if outcome is True]
    assert len(winners) == 1, outcomes
    assert sum(isinstance(o, VersionConflict) for o in outcomes) == n - 1
    assert registry.get(7).digest == f"sha256:writer-{winners[0]}"


BEHAVIOUR_CHECKS = [
    check_empty_registry,
    check_publish_roundtrip,
    check_duplicate_same_digest_changes_nothing,
    check_conflicting_digest_raises_and_keeps_record,
    check_latest_is_monotone,
    check_mark_evicted,
    check_ewma_roundtrip,
    check_replica_leases,
    check_version_leases,
    check_lease_holders_are_bounded_per_version,
    check_a_shorter_renewal_by_one_holder_keeps_another_holders_longer_lease,
    check_deregister,
    check_heartbeat_rejects_nonpositive_ttl,
    check_concurrent_publishers_one_wins,
]


def check_id(check) -> str:
    return check.__name__.removeprefix("check_")

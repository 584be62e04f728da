"""LeaseFiles: durable leases beside the snapshots, their renewal, release and lapse."""

from __future__ import annotations

import os
import time

import pytest

from logit_service.snapshots.leases import LEASES_DIRNAME, LeaseFiles


def test_a_lease_is_live_until_it_lapses_and_seen_by_another_instance(tmp_path):
    LeaseFiles(tmp_path).take(7, "rollout-a", ttl_s=60)

    leased = LeaseFiles(tmp_path).leased()  # another replica, or this one after a restart

    assert list(leased) == [7] and 0 < leased[7] <= 60
    LeaseFiles(tmp_path).take(8, "rollout-a", ttl_s=0.001)
    time.sleep(0.01)  # let the 1 ms lease lapse
    assert list(LeaseFiles(tmp_path).leased()) == [7]


def test_release_ends_only_that_holders_lease(tmp_path):
    leases = LeaseFiles(tmp_path)
    leases.take(3, "a", ttl_s=60)
    leases.take(3, "b", ttl_s=60)

    leases.release(3, "a")
    assert list(leases.leased()) == [3]
    leases.release(3, "b")
    assert leases.leased() == {}
    leases.release(3, "never held")  # a no-op


def test_renewals_leave_one_file_with_the_latest_expiry(tmp_path):
    first, second = LeaseFiles(tmp_path), LeaseFiles(tmp_path)  # two replicas renewing one lease
    first.take(5, "holder/with odd:chars", ttl_s=60)
    second.take(5, "holder/with odd:chars", ttl_s=120)
    first.take(5, "holder/with odd:chars", ttl_s=30)  # an earlier expiry never removes a later one

    names = os.listdir(tmp_path / LEASES_DIRNAME)

    assert len(names) == 2 and all(n.startswith("v00000005.") for n in names)
    assert 60 < first.leased()[5] <= 120


def test_long_lapsed_files_and_stale_half_written_ones_are_removed(tmp_path):
    leases = LeaseFiles(tmp_path)
    leases.take(1, "old", ttl_s=60)
    (lapsed,) = os.listdir(tmp_path / LEASES_DIRNAME)
    stamp = int((time.time() - 3600) * 1000)
    os.rename(tmp_path / LEASES_DIRNAME / lapsed, tmp_path / LEASES_DIRNAME / f"v00000001.{lapsed.split('.')[1]}.{stamp}")
    half = tmp_path / LEASES_DIRNAME / ".tmp-0123"
    half.write_text("{")
    os.utime(half, (time.time() - 600, time.time() - 600))

    assert leases.leased() == {}
    leases.remove_stale(60)
    assert os.listdir(tmp_path / LEASES_DIRNAME) == []


def test_a_lease_needs_a_positive_ttl(tmp_path):
    with pytest.raises(ValueError):
        LeaseFiles(tmp_path).take(1, "h", ttl_s=0)


def test_lease_files_are_readable_by_replicas_running_as_other_users(tmp_path):
    previous = os.umask(0o077)
    try:
        LeaseFiles(tmp_path).take(2, "h", ttl_s=60)
    finally:
        os.umask(previous)
    directory = tmp_path / LEASES_DIRNAME
    (name,) = os.listdir(directory)

    assert directory.stat().st_mode & 0o777 == 0o755
    assert (directory / name).stat().st_mode & 0o777 == 0o644

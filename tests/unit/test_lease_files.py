"""LeaseFiles: durable leases beside the snapshots, their renewal, release and lapse."""

from __future__ import annotations

import json
import os
import time

import pytest

from logit_service.snapshots.leases import LEASES_DIRNAME, LeaseFiles


def test_a_lease_is_live_until_it_lapses_and_seen_by_another_instance(tmp_path):
    LeaseFiles(tmp_path).take(7, "rollout-a", ttl_s=60)

    leased = LeaseFiles(tmp_path).leased()  # another replica, or this one after a restart

    assert leased == {7} and LeaseFiles(tmp_path).is_leased(7)
    LeaseFiles(tmp_path).take(8, "rollout-a", ttl_s=0.001)
    time.sleep(0.01)  # let the 1 ms lease lapse
    assert LeaseFiles(tmp_path).leased() == {7} and not LeaseFiles(tmp_path).is_leased(8)


def test_release_ends_only_that_holders_lease(tmp_path):
    leases = LeaseFiles(tmp_path)
    leases.take(3, "a", ttl_s=60)
    leases.take(3, "b", ttl_s=60)

    leases.release(3, "a")
    assert leases.leased() == {3}
    leases.release(3, "b")
    assert leases.leased() == set()
    assert os.listdir(tmp_path / LEASES_DIRNAME) == []  # no empty directories left behind
    leases.release(3, "never held")  # a no-op


def test_renewals_leave_one_file_with_the_latest_expiry(tmp_path):
    first, second = LeaseFiles(tmp_path), LeaseFiles(tmp_path)  # two replicas renewing one lease
    first.take(5, "holder/with odd:chars", ttl_s=60)
    second.take(5, "holder/with odd:chars", ttl_s=120)
    first.take(5, "holder/with odd:chars", ttl_s=30)  # an earlier expiry never removes a later one

    (version_dir,) = os.listdir(tmp_path / LEASES_DIRNAME)
    (holder_dir,) = os.listdir(tmp_path / LEASES_DIRNAME / version_dir)
    expiries = sorted(int(n) for n in os.listdir(tmp_path / LEASES_DIRNAME / version_dir / holder_dir))

    assert version_dir == "v00000005" and len(expiries) == 2
    assert 60_000 < expiries[-1] - time.time() * 1000 <= 120_000


def test_long_lapsed_files_and_stale_half_written_ones_are_removed(tmp_path):
    leases = LeaseFiles(tmp_path)
    leases.take(1, "old", ttl_s=60)
    holder_dir = tmp_path / LEASES_DIRNAME / "v00000001" / os.listdir(tmp_path / LEASES_DIRNAME / "v00000001")[0]
    (lapsed,) = os.listdir(holder_dir)
    stamp = int((time.time() - 3600) * 1000)
    os.rename(holder_dir / lapsed, holder_dir / str(stamp))
    half = tmp_path / LEASES_DIRNAME / ".tmp-0123"
    half.write_text("{")
    os.utime(half, (time.time() - 600, time.time() - 600))

    assert leases.leased() == set()
    leases.remove_stale(60)
    assert os.listdir(tmp_path / LEASES_DIRNAME) == []


def test_files_of_the_earlier_flat_layout_are_honoured_released_and_cleaned(tmp_path):
    LeaseFiles(tmp_path).take(9, "h", ttl_s=60)
    holder = os.listdir(tmp_path / LEASES_DIRNAME / "v00000009")[0]
    live = int((time.time() + 60) * 1000)
    lapsed = int((time.time() - 3600) * 1000)
    (tmp_path / LEASES_DIRNAME / f"v00000004.{holder}.{live}").write_text("{}")
    (tmp_path / LEASES_DIRNAME / f"v00000005.{holder}.{lapsed}").write_text("{}")
    leases = LeaseFiles(tmp_path)

    assert leases.leased() == {4, 9} and leases.is_leased(4) and not leases.is_leased(5)
    leases.release(4, "h")
    leases.remove_stale(60)
    assert leases.leased() == {9}
    assert sorted(os.listdir(tmp_path / LEASES_DIRNAME)) == ["v00000009"]


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
    version_dir = directory / "v00000002"
    (holder_dir,) = (version_dir / name for name in os.listdir(version_dir))
    (name,) = os.listdir(holder_dir)

    assert all(d.stat().st_mode & 0o777 == 0o755 for d in (directory, version_dir, holder_dir))
    assert (holder_dir / name).stat().st_mode & 0o777 == 0o644


NOW_S = 1_800_000_000.0  # a fixed wall clock, so the boundaries below are exact to the millisecond


def _flat_file(tmp_path, version: int, expiry_ms: int) -> str:
    name = f"v{version:08d}.0123456789abcdef.{expiry_ms}"
    (tmp_path / LEASES_DIRNAME).mkdir(exist_ok=True)
    (tmp_path / LEASES_DIRNAME / name).write_text("{}")
    return name


def test_a_lease_ends_at_its_expiry_millisecond(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "time", lambda: NOW_S)
    now_ms = int(NOW_S * 1000)
    _flat_file(tmp_path, 1, now_ms)  # expires now: no longer live
    _flat_file(tmp_path, 2, now_ms + 1)
    leases = LeaseFiles(tmp_path)

    assert leases.leased() == {2}
    assert not leases.is_leased(1) and leases.is_leased(2)


def test_lapsed_files_are_kept_for_a_minute_then_removed(tmp_path, monkeypatch):
    # A file lapsed less than a minute ago may be a renewal racing the cleaner on a slower clock: kept.
    monkeypatch.setattr(time, "time", lambda: NOW_S)
    now_ms = int(NOW_S * 1000)
    kept = _flat_file(tmp_path, 3, now_ms - 60_000 + 1)
    _flat_file(tmp_path, 4, now_ms - 60_000 - 1)
    LeaseFiles(tmp_path).take(5, "h", ttl_s=1)
    holder_dir = tmp_path / LEASES_DIRNAME / "v00000005" / os.listdir(tmp_path / LEASES_DIRNAME / "v00000005")[0]
    (only,) = os.listdir(holder_dir)
    os.rename(holder_dir / only, holder_dir / str(now_ms - 60_000 + 1))
    (holder_dir / str(now_ms - 60_000 - 1)).write_text("{}")

    LeaseFiles(tmp_path).remove_stale(60)

    assert sorted(os.listdir(tmp_path / LEASES_DIRNAME)) == [kept, "v00000005"]
    assert os.listdir(holder_dir) == [str(now_ms - 60_000 + 1)]


def test_a_lease_file_says_whose_lease_it_is(tmp_path, monkeypatch):
    # The directory names are hashes; the body is what an operator reads to see who holds what.
    monkeypatch.setattr(time, "time", lambda: NOW_S)
    LeaseFiles(tmp_path).take(6, "rollout-7/sample-3", ttl_s=30)
    holder_dir = tmp_path / LEASES_DIRNAME / "v00000006" / os.listdir(tmp_path / LEASES_DIRNAME / "v00000006")[0]
    (name,) = os.listdir(holder_dir)

    body = json.loads((holder_dir / name).read_text())

    assert body == {"policy_version": 6, "holder": "rollout-7/sample-3", "expires_at_ms": int((NOW_S + 30) * 1000)}
    assert name == str(body["expires_at_ms"])

"""Nothing the server was asked to keep is lost with registry state, and state survives restarts and
faults: server restarts, Redis restarts without persistence, Redis outages, killed writers and deleters,
corrupted configs and snapshots written by another user. Real servers, real redis-server, real files."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from logit_client import LogitClient, SequenceInput
from logit_service import errors
from logit_service.registry.redis import RedisRegistry
from logit_service.snapshots.writer import write_snapshot
from logit_service.types import TokenSource
from tests.helpers import random_tokens
from tests.redis_server import running_redis_server
from tests.server_process import ServerProcess

TOKENS = random_tokens(30, seed=31)
NOBODY = 65534
# Polls below wait for the server's own periodic scan (scan_interval_s=0.05); this bounds them.
WAIT_S = 20.0


def _score(client: LogitClient, version: int, **options):
    return client.score([SequenceInput(TOKENS, spans=((version, 1, 30),))], **options).sequences[0]


def _assert_exact(client, trained, version):
    np.testing.assert_allclose(_score(client, version).logprobs[1:], trained.reference(version, TOKENS)[1:], atol=1e-5)


def _publish(client, trained, snapshot_dir, versions):
    for version in versions:
        client.publish(version, trained.states[version], snapshot_dir, model_config=trained.config)


def _wait_for(predicate, what: str):
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            if predicate():
                return
        except errors.LogitServiceError:
            pass
        assert time.monotonic() < deadline, f"{what} did not happen within {WAIT_S} s"
        time.sleep(0.05)  # poll interval while waiting for the server's periodic scan


def _restart(make_server, server, snapshot_dir, **overrides):
    server.stop()
    return make_server(snapshot_dir, **overrides)


# --- leases --------------------------------------------------------------------------------------------


def test_a_leased_version_survives_a_restart_with_the_in_process_registry(make_server, snapshot_dir, trained):
    settings = dict(retention_window=2, scan_interval_s=0.05)
    server = make_server(snapshot_dir, **settings)
    with LogitClient(server.address, timeout_s=60) as client:
        _publish(client, trained, snapshot_dir, [0, 1])
        client.lease_versions([0], holder="rollout-1", ttl_s=600)
        _publish(client, trained, snapshot_dir, [2, 3])  # the window is [2, 3]; the lease keeps 0

    server = _restart(make_server, server, snapshot_dir, **settings)
    with LogitClient(server.address, timeout_s=60) as client:
        assert (snapshot_dir / "v00000000").is_dir()
        assert not (snapshot_dir / "v00000001").exists()
        _assert_exact(client, trained, 0)
        listed = {v.policy_version: v for v in client.list_versions().versions}
        assert listed[0].leased and client.list_versions().latest_version == 3
        client.lease_versions([0], holder="rollout-1", ttl_s=600)  # the holder can renew after the restart
        client.release_versions([0], holder="rollout-1")
        with pytest.raises(errors.VersionOutsideWindow):
            _score(client, 0)
        assert not (snapshot_dir / "v00000000").exists()


def test_a_leased_version_survives_redis_restarting_empty(make_server, snapshot_dir, trained):
    with running_redis_server() as redis_server:
        port = redis_server.port
        server = make_server(snapshot_dir, redis_url=redis_server.url, retention_window=2, scan_interval_s=0.05)
        client = LogitClient(server.address, timeout_s=60, max_retries=0)
        _publish(client, trained, snapshot_dir, [0, 1])
        client.lease_versions([0], holder="rollout-2", ttl_s=600)
        _publish(client, trained, snapshot_dir, [2, 3])
        digests = {v.policy_version: v.digest for v in client.list_versions().versions}
    # No persistence: the new Redis on the same URL is empty.
    with running_redis_server(port=port):
        _wait_for(lambda: client.list_versions().latest_version == 3, "re-registering the versions on disk")
        # Another replica's retention pass on the rebuilt registry, from a fresh server: still kept.
        other = make_server(snapshot_dir, redis_url=f"redis://127.0.0.1:{port}/0", retention_window=2)
        with LogitClient(other.address, timeout_s=60) as second:
            _assert_exact(second, trained, 0)
            assert {v.policy_version: v.digest for v in second.list_versions().versions} == digests
        assert (snapshot_dir / "v00000000").is_dir()
        _assert_exact(client, trained, 0)
        client.release_versions([0], holder="rollout-2")
        with pytest.raises(errors.VersionOutsideWindow):
            _score(client, 0)
        client.close()


# --- names and latest ----------------------------------------------------------------------------------


def test_a_directory_not_named_for_its_version_is_refused_and_latest_survives_a_restart(make_server, snapshot_dir, trained):
    server = make_server(snapshot_dir, retention_window=4)
    with LogitClient(server.address, timeout_s=60) as client:
        _publish(client, trained, snapshot_dir, [0, 1, 2])
        odd = write_snapshot(snapshot_dir, 3, trained.states[3], trained.config, dirname="trainer-step-3")
        with pytest.raises(errors.InvalidRequest, match="must be v00000003/"):
            client.publish_version(3, odd.name)
        with pytest.raises(errors.VersionNotFound):
            client.get_version(3)
        before = client.list_versions()

    server = _restart(make_server, server, snapshot_dir, retention_window=4)
    with LogitClient(server.address, timeout_s=60) as client:
        after = client.list_versions()
        assert after.latest_version == before.latest_version == 2
        assert [v.digest for v in after.versions] == [v.digest for v in before.versions]


# --- the EWMA record -----------------------------------------------------------------------------------


def test_the_ewma_record_comes_back_after_redis_restarts_empty(make_server, snapshot_dir, trained):
    with running_redis_server() as redis_server:
        port = redis_server.port
        server = make_server(snapshot_dir, redis_url=redis_server.url, retention_window=2, scan_interval_s=0.05)
        client = LogitClient(server.address, timeout_s=60, max_retries=0)
        _publish(client, trained, snapshot_dir, [0, 1, 2, 3])
        _wait_for(lambda: client.list_versions().ewma.policy_version == 3, "folding every version")
        before = _score(client, 0, allow_ewma_fallback=True)
        before_digest = client.list_versions().ewma.digest
    with running_redis_server(port=port):
        # No publish after the wipe: the record must come back from the EWMA snapshot on disk.
        _wait_for(lambda: client.list_versions().ewma is not None, "restoring the EWMA record")
        assert client.list_versions().ewma.digest == before_digest
        after = _score(client, 0, allow_ewma_fallback=True)
        assert (after.sources[1:] == TokenSource.EWMA).all()
        assert np.array_equal(after.logprobs, before.logprobs, equal_nan=True)
        client.close()


# --- crash leftovers -----------------------------------------------------------------------------------


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    for p in [path, *path.iterdir()]:
        os.utime(p, (then, then))


def test_start_up_removes_what_killed_writers_and_deleters_left(make_server, snapshot_dir, trained):
    server = make_server(snapshot_dir, retention_window=2)
    with LogitClient(server.address, timeout_s=60) as client:
        _publish(client, trained, snapshot_dir, [0, 1, 2, 3])
    server.stop()
    trained.write(snapshot_dir, 0)  # killed after deciding to evict version 0, before deleting it
    half_deleted = snapshot_dir / ".trash-v00000001-0badf00d"
    shutil.copytree(snapshot_dir / "v00000002", half_deleted)
    (half_deleted / "model.safetensors").unlink()
    dead_writer = snapshot_dir / ".tmp-v00000004-deadbeef"
    dead_writer.mkdir()
    (dead_writer / "model.safetensors").write_bytes(b"half written")
    _age(dead_writer, 2 * 3600)
    live_writer = snapshot_dir / ".tmp-v00000004-0000cafe"  # another host writing right now
    live_writer.mkdir()
    (live_writer / "model.safetensors").write_bytes(b"being written")

    server = make_server(snapshot_dir, retention_window=2)
    with LogitClient(server.address, timeout_s=60) as client:
        assert sorted(p.name for p in snapshot_dir.iterdir() if not p.name.startswith("ewma-")) == [
            ".tmp-v00000004-0000cafe", "v00000002", "v00000003"
        ]
        with pytest.raises(errors.VersionOutsideWindow):
            _score(client, 0)
        _assert_exact(client, trained, 3)


def test_start_up_deletes_a_version_redis_records_as_evicted(make_server, snapshot_dir, trained, redis_url):
    namespace = "leftovers"
    settings = dict(redis_url=redis_url, redis_namespace=namespace, retention_window=2)
    server = make_server(snapshot_dir, **settings)
    with LogitClient(server.address, timeout_s=60) as client:
        _publish(client, trained, snapshot_dir, [0, 1, 2])
    server.stop()
    assert not (snapshot_dir / "v00000000").exists()
    registry = RedisRegistry(redis_url, namespace=namespace)
    try:
        # As a replica killed between the decision and the deletion leaves it: evicted, still on disk.
        registry.mark_evicted([1])
        assert (snapshot_dir / "v00000001").is_dir()
    finally:
        registry.close()

    server = make_server(snapshot_dir, **settings)
    assert not (snapshot_dir / "v00000001").exists()
    with LogitClient(server.address, timeout_s=60) as client:
        assert client.get_version(1).state == "evicted"
        _assert_exact(client, trained, 2)


# --- a Redis outage ------------------------------------------------------------------------------------


def test_scoring_known_versions_goes_on_while_redis_is_down(make_server, snapshot_dir, trained):
    with running_redis_server() as redis_server:
        port = redis_server.port
        server = make_server(snapshot_dir, redis_url=redis_server.url, retention_window=3, heartbeat_s=0.1)
        client = LogitClient(server.address, timeout_s=60, max_retries=0)
        _publish(client, trained, snapshot_dir, [0, 1, 2])
        _assert_exact(client, trained, 2)  # in RAM now
    # Redis is down.
    _assert_exact(client, trained, 2)
    _assert_exact(client, trained, 1)  # on disk, recorded before the outage
    for call in (
        lambda: _score(client, 9),  # never seen: only the registry could tell
        lambda: client.publish(3, trained.states[3], snapshot_dir, model_config=trained.config),
        lambda: client.lease_versions([1], holder="rollout-3", ttl_s=60),
    ):
        with pytest.raises(errors.LogitServiceError, match="unreachable") as info:
            call()
        assert info.value.code == grpc.StatusCode.UNAVAILABLE and info.value.retryable
    _wait_for(lambda: not client.health("logit_service.v1.LogitService"), "readiness turning NOT_SERVING")
    with running_redis_server(port=port):
        _wait_for(lambda: client.health("logit_service.v1.LogitService"), "readiness coming back")
        client.publish_version(3, "v00000003")  # written during the outage, registered now
        _assert_exact(client, trained, 3)
    client.close()


# --- config.json -----------------------------------------------------------------------------------------


def test_a_changed_config_byte_of_a_later_version_is_data_loss(make_server, snapshot_dir, trained):
    server = make_server(snapshot_dir, retention_window=4, cache_bytes=0)
    with LogitClient(server.address, timeout_s=60) as client:
        _publish(client, trained, snapshot_dir, [0, 1])
        _assert_exact(client, trained, 0)  # the model is built from version 0's config
        config = snapshot_dir / "v00000001" / "config.json"
        config.write_text(config.read_text().replace(": ", ":  ", 1))  # same JSON, one byte more
        with pytest.raises(errors.SnapshotCorrupt, match="config.json"):
            _score(client, 1)
        _assert_exact(client, trained, 0)


# --- file modes --------------------------------------------------------------------------------------------


def test_snapshot_files_are_readable_by_everyone_whatever_the_umask(tmp_path, trained):
    previous = os.umask(0o077)
    try:
        path = trained.write(tmp_path / "new-root", 0)
    finally:
        os.umask(previous)
    assert path.parent.stat().st_mode & 0o777 == 0o755
    assert path.stat().st_mode & 0o777 == 0o755
    for child in path.iterdir():
        assert child.stat().st_mode & 0o777 == 0o644, child.name


# Root ignores file modes; without these capabilities it is bound by them like any other user.
WITHOUT_FILE_OVERRIDES = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--")


def _as_another_users_files(path: Path) -> None:
    for p in [path, *path.iterdir()]:
        os.chown(p, NOBODY, NOBODY)


def test_a_server_as_another_user_serves_snapshots_and_refuses_unreadable_ones(snapshot_dir, trained):
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to own files as another user and run a server bound by modes")
    previous = os.umask(0o077)  # a trainer with a private umask, as another user
    try:
        _as_another_users_files(trained.write(snapshot_dir, 0))
        unreadable = trained.write(snapshot_dir, 1)
    finally:
        os.umask(previous)
    (unreadable / "model.safetensors").chmod(0o600)  # as a writer that leaves safetensors' own mode
    _as_another_users_files(unreadable)
    with ServerProcess(snapshot_dir, "--scan-interval-s", "0.05", prefix=WITHOUT_FILE_OVERRIDES) as server:
        with LogitClient(server.address, timeout_s=60, max_retries=0) as client:
            client.publish_version(0, "v00000000")
            _assert_exact(client, trained, 0)
            with pytest.raises(errors.SnapshotCorrupt, match="cannot be read by this server"):
                client.publish_version(1, "v00000001")
            with pytest.raises(errors.VersionNotFound):
                client.get_version(1)
            with pytest.raises(errors.VersionNotFound):
                _score(client, 1)  # a lookup rescans the directory: the scan does not register it either
            assert client.list_versions().latest_version == 0

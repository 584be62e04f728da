"""The snapshot directory is untrusted input: links, special files and malformed manifests are refused
over the wire, never followed, never echoed, and never stop the server from starting or scanning."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from logit_client import LogitClient, SequenceInput
from logit_service import errors
from logit_service.snapshots.manifest import MANIFEST_NAME, snapshot_dirname
from logit_service.snapshots.writer import CONFIG_NAME, WEIGHTS_NAME, write_snapshot
from logit_service.v1 import logit_service_pb2 as pb
from logit_service.v1 import logit_service_pb2_grpc as pb_grpc
from tests.helpers import random_tokens
from tests.server_process import ServerProcess

TOKENS = random_tokens(20, seed=3)
# Every call of these tests carries a deadline, so a wedged server fails the test instead of hanging it.
TIMEOUT_S = 30


def _score(client, version):
    return client.score([SequenceInput(TOKENS, spans=((version, 1, 20),))], timeout_s=TIMEOUT_S).sequences[0].logprobs


@pytest.fixture
def served(make_server, snapshot_dir, trained):
    """A server on `snapshot_dir` holding versions 0 and 1, and a client; no EWMA, no weight cache, so
    every Score reads the snapshot's files again."""
    server = make_server(snapshot_dir, cache_bytes=0, ewma_enabled=False)
    client = LogitClient(server.address, timeout_s=TIMEOUT_S, max_retries=0)
    for version in range(2):
        client.publish(version, trained.states[version], snapshot_dir, model_config=trained.config)
    yield server, client
    client.close()


def _link(path, target) -> None:
    path.unlink()
    path.symlink_to(target)


def test_a_symlinked_weights_file_is_never_published_even_when_its_bytes_match(served, snapshot_dir, trained, tmp_path):
    _, client = served
    path = trained.write(snapshot_dir, 2)
    outside = tmp_path / "outside.safetensors"
    shutil.copyfile(path / WEIGHTS_NAME, outside)  # the very bytes the manifest lists, but outside the snapshot
    _link(path / WEIGHTS_NAME, outside)
    with pytest.raises(errors.SnapshotCorrupt, match="v00000002/model.safetensors is a symbolic link"):
        client.publish_version(2, path.name)
    with pytest.raises(errors.VersionNotFound):
        client.get_version(2)


def test_a_weights_file_replaced_by_a_link_after_publishing_is_not_served(served, snapshot_dir, tmp_path):
    _, client = served
    weights = snapshot_dir / "v00000001" / WEIGHTS_NAME
    outside = tmp_path / "outside.safetensors"
    shutil.copyfile(weights, outside)
    _link(weights, outside)
    with pytest.raises(errors.SnapshotCorrupt, match="symbolic link"):
        _score(client, 1)
    _score(client, 0)  # other versions are still served


def test_data_loss_never_echoes_the_digest_of_what_was_found(served, snapshot_dir, tmp_path):
    _, client = served
    secret = tmp_path / "secret"
    secret.write_bytes(b"not for the client's eyes")
    weights = snapshot_dir / "v00000001" / WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    data[-2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(errors.SnapshotCorrupt) as info:
        _score(client, 1)
    message = info.value.message
    assert "v00000001/model.safetensors" in message and "does not match its manifest" in message
    assert hashlib.sha256(bytes(data)).hexdigest() not in message
    assert str(snapshot_dir) not in message  # files are named relative to the snapshot directory
    config = snapshot_dir / "v00000000" / CONFIG_NAME
    _link(config, secret)
    with pytest.raises(errors.SnapshotCorrupt) as info:
        client.publish_version(0, "v00000000")  # re-publishing re-verifies every file
    assert hashlib.sha256(secret.read_bytes()).hexdigest() not in info.value.message


def test_links_to_dev_zero_are_refused_at_once_and_sigterm_still_stops_the_server(snapshot_dir, trained):
    """Before the fix, hashing /dev/zero held an I/O thread forever: two such publishes wedged both, so
    ListVersions timed out and SIGTERM could not stop the process. A child process, so that a
    regression is killed (and fails the test) instead of hanging the test run."""
    for version in range(2):
        trained.write(snapshot_dir, version)
    weights_link, config_link = trained.write(snapshot_dir, 2), trained.write(snapshot_dir, 3)
    _link(weights_link / WEIGHTS_NAME, "/dev/zero")
    _link(config_link / CONFIG_NAME, "/dev/zero")
    server = ServerProcess(snapshot_dir, "--no-ewma-enabled", "--cache-bytes", "0").start()
    try:
        with LogitClient(server.address, timeout_s=TIMEOUT_S, max_retries=0) as client:
            with ThreadPoolExecutor(2) as pool:  # both I/O threads at once
                futures = [pool.submit(client.publish_version, v, snapshot_dirname(v)) for v in (2, 3)]
                for future in futures:
                    with pytest.raises(errors.SnapshotCorrupt, match="symbolic link"):
                        future.result(timeout=2 * TIMEOUT_S)
            assert client.list_versions().latest_version == 1
            _score(client, 1)
    finally:
        server.process.send_signal(signal.SIGTERM)
        try:
            code = server.process.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            code = None
        server.stop()  # kills it if SIGTERM did not
    assert code is not None, "SIGTERM did not stop the server"


def test_a_link_to_dev_zero_swapped_in_after_publishing_fails_the_score_not_the_server(served, snapshot_dir):
    _, client = served
    _link(snapshot_dir / "v00000001" / WEIGHTS_NAME, "/dev/zero")
    with pytest.raises(errors.SnapshotCorrupt):
        _score(client, 1)
    assert client.list_versions(timeout_s=TIMEOUT_S).latest_version == 1
    _score(client, 0)


def test_a_fifo_in_a_snapshot_is_refused_without_blocking(served, snapshot_dir, trained):
    _, client = served
    path = trained.write(snapshot_dir, 2)
    (path / WEIGHTS_NAME).unlink()
    os.mkfifo(path / WEIGHTS_NAME)  # opening a FIFO for reading would wait for a writer forever
    with pytest.raises(errors.SnapshotCorrupt, match="not a regular file"):
        client.publish_version(2, path.name)


def test_a_weights_file_longer_than_its_header_declares_is_refused(served, snapshot_dir, trained):
    _, client = served
    path = trained.write(snapshot_dir, 2)
    with open(path / WEIGHTS_NAME, "ab") as f:
        f.write(b"\0" * 16)
    with pytest.raises(errors.SnapshotCorrupt, match="safetensors header accounts for"):
        client.publish_version(2, path.name)


def test_a_snapshot_directory_that_is_a_link_is_refused(served, snapshot_dir, trained, tmp_path):
    _, client = served
    real = trained.write(tmp_path / "elsewhere", 2)
    (snapshot_dir / real.name).symlink_to(real, target_is_directory=True)
    with pytest.raises(errors.InvalidRequest, match="symbolic link"):
        client.publish_version(2, real.name)
    with pytest.raises(errors.InvalidRequest, match="symbolic link"):
        client.publish_version(2, str(snapshot_dir / real.name))
    with pytest.raises(errors.VersionNotFound):  # a Score of it rescans the directory: still not taken
        _score(client, 2)


def _write_manifest(path, edit) -> None:
    data = json.loads((path / MANIFEST_NAME).read_text())
    text = edit(data)
    (path / MANIFEST_NAME).write_text(text if isinstance(text, str) else json.dumps(data))


def _bad_entries(snapshot_dir, trained, tmp_path) -> None:
    """One of each kind of bad entry a snapshot directory may hold, as v00000001..v00000009."""

    def write(version):
        return write_snapshot(snapshot_dir, version, trained.states[0], trained.config)

    outside = trained.write(tmp_path / "outside", 1)
    (snapshot_dir / "v00000001").symlink_to(outside, target_is_directory=True)
    _write_manifest(write(2), lambda d: json.dumps(d).replace('"policy_version": 2', '"policy_version": 1e400'))
    _write_manifest(write(3), lambda d: "[]")
    _write_manifest(write(4), lambda d: "[" * 100_000 + "]" * 100_000)
    _write_manifest(write(5), lambda d: json.dumps(d).replace('"created_at": ', '"created_at": NaN, "x": '))
    _link(write(6) / MANIFEST_NAME, "/dev/zero")
    path = write(7)
    (path / MANIFEST_NAME).unlink()
    os.mkfifo(path / MANIFEST_NAME)
    (snapshot_dir / "v00000008").write_text("a file, not a directory")
    _write_manifest(write(9), lambda d: d.update(policy_version=9.0))
    (snapshot_dir / ("v" + "9" * 200)).mkdir()  # more digits than an int64 holds


def test_a_server_starts_and_serves_beside_bad_entries(make_server, snapshot_dir, trained, tmp_path):
    write_snapshot(snapshot_dir, 0, trained.states[0], trained.config)
    _bad_entries(snapshot_dir, trained, tmp_path)
    write_snapshot(snapshot_dir, 10, trained.states[2], trained.config)
    server = make_server(snapshot_dir, ewma_enabled=False, scan_interval_s=3600, retention_window=100)
    with LogitClient(server.address, timeout_s=TIMEOUT_S, max_retries=0) as client:
        assert [v.policy_version for v in client.list_versions().versions] == [0, 10]
        np.testing.assert_allclose(_score(client, 10)[1:], trained.reference(2, TOKENS)[1:], atol=1e-5, rtol=0)
        # A version written later is found by the rescan a Score of it triggers, bad entries and all.
        write_snapshot(snapshot_dir, 11, trained.states[1], trained.config)
        np.testing.assert_allclose(_score(client, 11)[1:], trained.reference(1, TOKENS)[1:], atol=1e-5, rtol=0)
        for version in range(1, 10):
            with pytest.raises(errors.VersionNotFound):
                client.get_version(version)


def test_a_publish_whose_digest_differs_from_the_registered_one_is_a_conflict(served, snapshot_dir, trained):
    server, client = served
    before = client.get_version(1).digest
    shutil.rmtree(snapshot_dir / "v00000001")  # other weights under the same version, at its only valid name
    other = write_snapshot(snapshot_dir, 1, trained.states[3], trained.config)
    channel = grpc.insecure_channel(server.address)
    try:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.LogitServiceStub(channel).PublishVersion(
                pb.PublishVersionRequest(policy_version=1, snapshot_path=other.name), timeout=TIMEOUT_S
            )
    finally:
        channel.close()
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS  # never OK with already_published
    assert "already published" in info.value.details()
    assert client.get_version(1).digest == before


@pytest.mark.parametrize("registered", [pytest.param(True, id="leftover registered"), pytest.param(False, id="leftover not yet scanned")])
def test_publishing_outside_the_servers_directory_onto_a_leftover_raises(make_server, snapshot_dir, trained, tmp_path, registered):
    """The trainer writes into its own directory; the server's holds a v00000002 of an earlier run. The
    name the client sends finds the leftover: the client must notice that the digest is not its own."""
    if registered:
        leftover = trained.write(snapshot_dir, 2)  # found by the start-up scan
    server = make_server(snapshot_dir, ewma_enabled=False, scan_interval_s=3600)
    if not registered:
        leftover = trained.write(snapshot_dir, 2)  # written after the last scan
    old_digest = json.loads((leftover / MANIFEST_NAME).read_text())["digest"]
    with LogitClient(server.address, timeout_s=TIMEOUT_S, max_retries=0) as client:
        with pytest.raises(errors.VersionConflict, match="digest") as info:
            client.publish(2, trained.states[4], tmp_path / "trainer", model_config=trained.config)
        assert old_digest in info.value.message
        # Into the server's own directory the other weights conflict on disk, before any RPC.
        with pytest.raises(errors.VersionConflict):
            client.publish(2, trained.states[4], snapshot_dir, model_config=trained.config)
        # A publish that lands where the server reads is accepted, and its digest checked.
        published = client.publish(3, trained.states[3], snapshot_dir, model_config=trained.config)
        assert published.digest == client.get_version(3).digest


def test_the_asyncio_publish_checks_the_registered_digest_too(make_server, snapshot_dir, trained, tmp_path):
    import asyncio

    from logit_client import AsyncLogitClient

    trained.write(snapshot_dir, 2)  # a leftover of an earlier run
    server = make_server(snapshot_dir, ewma_enabled=False, scan_interval_s=3600)

    async def run():
        async with AsyncLogitClient(server.address, timeout_s=TIMEOUT_S, max_retries=0) as client:
            with pytest.raises(errors.VersionConflict, match="digest"):
                await client.publish(2, trained.states[4], tmp_path / "trainer", model_config=trained.config)
            return await client.publish(3, trained.states[3], snapshot_dir, model_config=trained.config)

    assert not asyncio.run(run()).already_published

"""Publishing without a shared disk: UploadVersion and FetchVersion between real servers whose snapshot
directories are separate, with real safetensors snapshots of a tiny trained model."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from logit_client import LogitClient, SequenceInput, tls_credentials
from logit_client.upload import plan_upload

from logit_service import errors
from logit_service.registry.memory import InMemoryRegistry
from logit_service.snapshots.manifest import read_manifest
from logit_service.v1 import logit_service_pb2 as pb
from logit_service.v1 import logit_service_pb2_grpc as pb_grpc
from tests.certs import make_pki
from tests.helpers import random_tokens

TOKENS = random_tokens(20, seed=11)
PUBLISHER = "publisher-token-0123456789abcdef"
READER = "reader-token-0123456789abcdefgh"


def _score(client: LogitClient, version: int) -> np.ndarray:
    return client.score([SequenceInput(TOKENS, spans=((version, 1, len(TOKENS)),))]).sequences[0].logprobs


def _dirs(tmp_path: Path, *names: str) -> list[Path]:
    out = []
    for name in names:
        (tmp_path / name).mkdir()
        out.append(tmp_path / name)
    return out


def _wait(condition, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _staging(root: Path) -> list[Path]:
    return sorted(root.glob(".tmp-upload-*"))


def _versions(client: LogitClient) -> list[int]:
    return [v.policy_version for v in client.list_versions(include_evicted=True).versions]


def _stub(address: str, credentials=None):
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    return channel, pb_grpc.LogitServiceStub(channel)


def test_full_and_compact_uploads_serve_exactly_on_both_replicas(make_server, tmp_path, trained):
    a_dir, b_dir, trainer_dir = _dirs(tmp_path, "a", "b", "trainer")
    a = make_server(a_dir, ewma_enabled=False)
    b = make_server(b_dir, ewma_enabled=False, fetch_from=a.address)
    client_a = LogitClient(a.address, timeout_s=60, max_retries=0)
    client_b = LogitClient(b.address, timeout_s=60, max_retries=0)

    first = client_a.upload_version(0, trained.states[0], model_config=trained.config, work_dir=trainer_dir)
    assert first.policy_version == 0 and not first.already_published
    # Version 1 goes as a difference from version 0, which replica A holds and the trainer kept.
    plan = plan_upload(trainer_dir / "v00000000", None)
    assert not any(f.compact for f in plan.files)
    second = client_a.upload_version(1, trained.states[1], model_config=trained.config, work_dir=trainer_dir)
    difference = plan_upload(trainer_dir / "v00000001", trainer_dir / "v00000000")
    assert difference.base_version == 0 and [f.name for f in difference.files if f.compact] == ["model.safetensors"]
    assert difference.bytes_sent < plan_upload(trainer_dir / "v00000001", None).bytes_sent
    assert second.digest == read_manifest(trainer_dir / "v00000001").digest
    # A stores the restored full file: the same bytes the trainer wrote.
    assert (a_dir / "v00000001" / "model.safetensors").read_bytes() == (trainer_dir / "v00000001" / "model.safetensors").read_bytes()

    # B shares nothing with A: publishing the name makes it copy the version from A, verified.
    for v in (0, 1):
        published = client_b.publish_version(v, f"v{v:08d}")
        assert published.digest == read_manifest(trainer_dir / f"v{v:08d}").digest
    assert not _staging(a_dir) and not _staging(b_dir)
    for v in (0, 1):
        from_a, from_b = _score(client_a, v), _score(client_b, v)
        assert from_a.tobytes() == from_b.tobytes()
        np.testing.assert_allclose(from_a[1:], trained.reference(v, TOKENS)[1:], atol=1e-5, rtol=0)
    client_a.close()
    client_b.close()


def test_a_replica_sharing_the_registry_fetches_a_version_when_it_is_scored(make_server, tmp_path, trained):
    a_dir, b_dir = _dirs(tmp_path, "a", "b")
    registry = InMemoryRegistry()
    a = make_server(a_dir, registry=registry, ewma_enabled=False)
    b = make_server(b_dir, registry=registry, ewma_enabled=False, fetch_from=a.address)
    with LogitClient(a.address, max_retries=0) as client_a, LogitClient(b.address, max_retries=0) as client_b:
        client_a.upload_version(2, trained.states[2], model_config=trained.config)
        assert not (b_dir / "v00000002").exists()
        from_b = _score(client_b, 2)
        assert (b_dir / "v00000002" / "manifest.json").is_file()
        assert from_b.tobytes() == _score(client_a, 2).tobytes()
        np.testing.assert_allclose(from_b[1:], trained.reference(2, TOKENS)[1:], atol=1e-5, rtol=0)


def test_fetch_version_streams_the_stored_files(make_server, tmp_path, trained):
    (a_dir,) = _dirs(tmp_path, "a")
    a = make_server(a_dir, ewma_enabled=False)
    with LogitClient(a.address, max_retries=0) as client:
        client.upload_version(0, trained.states[0], model_config=trained.config)
    channel, stub = _stub(a.address)
    messages = list(stub.FetchVersion(pb.FetchVersionRequest(policy_version=0), timeout=60))
    header = messages[0].header
    assert header.manifest_json == (a_dir / "v00000000" / "manifest.json").read_bytes()
    for index, f in enumerate(header.files):
        data = b"".join(m.data.data for m in messages[1:] if m.data.file_index == index)
        assert data == (a_dir / "v00000000" / f.name).read_bytes() and len(data) == f.size
    assert all(len(m.data.data) <= 1 << 20 for m in messages[1:])
    with pytest.raises(grpc.RpcError) as missing:
        list(stub.FetchVersion(pb.FetchVersionRequest(policy_version=7), timeout=60))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    channel.close()


def _plan(trained, tmp_path: Path, version: int = 0):
    trainer = tmp_path / "trainer"
    trained.write(trainer, version)
    return plan_upload(trainer / f"v{version:08d}", None)


def _refused_with(stub, messages, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as refused:
        stub.UploadVersion(iter(messages), timeout=60)
    assert refused.value.code() == code, refused.value.details()
    return refused.value.details()


def test_a_corrupted_chunk_is_data_loss_and_leaves_nothing(make_server, tmp_path, trained):
    (a_dir,) = _dirs(tmp_path, "a")
    a = make_server(a_dir, ewma_enabled=False)
    messages = list(_plan(trained, tmp_path).messages(chunk_bytes=4096))
    damaged = bytearray(messages[3].data.data)
    damaged[100] ^= 0x01
    messages[3] = pb.SnapshotChunk(data=pb.SnapshotData(file_index=messages[3].data.file_index,
                                                        offset=messages[3].data.offset, data=bytes(damaged)))  # fmt: skip
    channel, stub = _stub(a.address)
    assert "do not hash" in _refused_with(stub, messages, grpc.StatusCode.DATA_LOSS)
    _wait(lambda: not _staging(a_dir), "the staging directory to go")
    assert not (a_dir / "v00000000").exists()
    with LogitClient(a.address, max_retries=0) as client:
        assert _versions(client) == []
    channel.close()


def test_malformed_streams_are_invalid_argument_and_a_bad_manifest_digest_data_loss(make_server, tmp_path, trained):
    (a_dir,) = _dirs(tmp_path, "a")
    a = make_server(a_dir, ewma_enabled=False)
    messages = list(_plan(trained, tmp_path).messages(chunk_bytes=4096))
    channel, stub = _stub(a.address)
    header, chunks = messages[0], messages[1:]
    assert "before the header" in _refused_with(stub, chunks, grpc.StatusCode.INVALID_ARGUMENT)
    assert [c.data.file_index for c in chunks[:3]] == [0, 1, 1]  # config.json, then the weights
    assert "chunks arrive in order" in _refused_with(
        stub, [header, chunks[0], chunks[2], chunks[1], *chunks[3:]], grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "of its" in _refused_with(stub, [header, *chunks[:-1]], grpc.StatusCode.INVALID_ARGUMENT)  # ends early
    forged = pb.SnapshotChunk()
    forged.CopyFrom(header)
    forged.header.manifest_json = header.header.manifest_json.replace(b'"dtype": "float32"', b'"dtype": "float16"')
    assert forged.header.manifest_json != header.header.manifest_json
    _refused_with(stub, [forged, *chunks], grpc.StatusCode.DATA_LOSS)
    _wait(lambda: not _staging(a_dir), "the staging directories to go")
    assert sorted(p.name for p in a_dir.iterdir() if not p.name.startswith(".leases")) == []
    channel.close()


def test_an_upload_over_the_byte_limit_is_resource_exhausted(make_server, tmp_path, trained):
    (a_dir,) = _dirs(tmp_path, "a")
    plan = _plan(trained, tmp_path)
    a = make_server(a_dir, ewma_enabled=False, max_upload_bytes=plan.bytes_sent - 1)
    channel, stub = _stub(a.address)
    details = _refused_with(stub, list(plan.messages()), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert f"the limit is {plan.bytes_sent - 1}" in details
    _wait(lambda: not _staging(a_dir), "the staging directory to go")
    assert not (a_dir / "v00000000").exists()
    channel.close()


@pytest.mark.parametrize("how", ["cancel", "deadline"])
def test_an_interrupted_upload_leaves_nothing_registered(make_server, tmp_path, trained, how):
    (a_dir,) = _dirs(tmp_path, "a")
    a = make_server(a_dir, ewma_enabled=False)
    messages = list(_plan(trained, tmp_path).messages(chunk_bytes=4096))
    release = threading.Event()

    def stalled():
        yield from messages[:4]  # the header, config.json and two chunks of the weights; then it stalls
        release.wait(120)

    channel, stub = _stub(a.address)
    future = stub.UploadVersion.future(stalled(), timeout=None if how == "cancel" else 2.0)
    _wait(lambda: any(p.is_file() and p.stat().st_size >= 8192 for d in _staging(a_dir) for p in d.iterdir()),
          "the first chunks to land in staging")  # fmt: skip
    if how == "cancel":
        future.cancel()
        assert future.cancelled()
    else:
        with pytest.raises(grpc.RpcError) as ended:
            future.result()
        assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _wait(lambda: not _staging(a_dir), "the staging directory to go")
    release.set()
    assert not (a_dir / "v00000000").exists()
    with LogitClient(a.address, max_retries=0) as client:
        assert _versions(client) == []
        # The replica is unharmed: the same version uploads fine afterwards.
        assert client.upload_version(0, tmp_path / "trainer" / "v00000000").policy_version == 0
    channel.close()


def test_other_weights_under_a_stored_version_touch_nothing(make_server, tmp_path, trained):
    (a_dir,) = _dirs(tmp_path, "a")
    a = make_server(a_dir, ewma_enabled=False)
    with LogitClient(a.address, max_retries=0) as client:
        client.upload_version(0, trained.states[0], model_config=trained.config)
        before = _score(client, 0)
        stored = (a_dir / "v00000000" / "model.safetensors").read_bytes()
        with pytest.raises(errors.VersionConflict):
            client.upload_version(0, trained.states[1], model_config=trained.config)
        assert (a_dir / "v00000000" / "model.safetensors").read_bytes() == stored
        assert _score(client, 0).tobytes() == before.tobytes()
        again = client.upload_version(0, trained.states[0], model_config=trained.config)
        assert again.already_published
    _wait(lambda: not _staging(a_dir), "the staging directories to go")


def test_a_difference_from_a_version_the_replica_lacks_is_refused(make_server, tmp_path, trained):
    (a_dir,) = _dirs(tmp_path, "a")
    a = make_server(a_dir, ewma_enabled=False)
    trainer = tmp_path / "trainer"
    trained.write(trainer, 0)
    trained.write(trainer, 1)
    plan = plan_upload(trainer / "v00000001", trainer / "v00000000")
    channel, stub = _stub(a.address)
    _refused_with(stub, list(plan.messages()), grpc.StatusCode.NOT_FOUND)
    # The client checks first and falls back to full files.
    with LogitClient(a.address, max_retries=0) as client:
        assert client.upload_version(1, trainer / "v00000001").policy_version == 1
    channel.close()


def test_uploads_need_the_publisher_role_and_fetches_a_reader(make_server, tmp_path, trained):
    (a_dir,) = _dirs(tmp_path, "a")
    a = make_server(a_dir, ewma_enabled=False, auth_token=PUBLISHER, reader_token=READER)
    snapshot = _plan(trained, tmp_path)
    with LogitClient(a.address, max_retries=0, auth_token=READER) as reader, pytest.raises(errors.PermissionDenied):
        reader.upload_version(0, tmp_path / "trainer" / "v00000000")
    with LogitClient(a.address, max_retries=0, auth_token=PUBLISHER) as publisher:
        assert publisher.upload_version(0, tmp_path / "trainer" / "v00000000").digest == read_manifest(
            tmp_path / "trainer" / "v00000000"
        ).digest
    channel, stub = _stub(a.address)
    fetched = list(stub.FetchVersion(pb.FetchVersionRequest(policy_version=0), timeout=60,
                                     metadata=(("authorization", f"Bearer {READER}"),)))  # fmt: skip
    assert fetched[0].header.manifest_json == snapshot.manifest_json
    channel.close()


def test_upload_and_peer_fetch_over_tls(make_server, tmp_path, trained):
    a_dir, b_dir, pki_dir = _dirs(tmp_path, "a", "b", "pki")
    pki = make_pki(pki_dir)
    tls = {"tls_cert_file": pki.server_cert, "tls_key_file": pki.server_key}
    a = make_server(a_dir, ewma_enabled=False, **tls)
    b = make_server(b_dir, ewma_enabled=False, fetch_from=a.address, fetch_tls_ca_file=pki.ca, **tls)
    credentials = tls_credentials(str(pki.ca))
    with LogitClient(a.address, max_retries=0, credentials=credentials) as client_a:
        client_a.upload_version(0, trained.states[0], model_config=trained.config)
        with LogitClient(b.address, max_retries=0, credentials=credentials) as client_b:
            client_b.publish_version(0, "v00000000")
            assert _score(client_b, 0).tobytes() == _score(client_a, 0).tobytes()

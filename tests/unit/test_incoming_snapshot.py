"""A streamed snapshot's header is untrusted input, checked before a byte is written; an abandoned
transfer refuses every later write.

IncomingSnapshot on a real SnapshotStore, fed the messages the client's upload plan builds from a real
safetensors snapshot; the tests over the wire are in tests/integration/test_streamed_snapshots.py.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from logit_client.upload import plan_upload

from logit_service.demo.tiny_model import build_tiny_model
from logit_service.errors import InvalidRequest, RequestTooLarge
from logit_service.registry.memory import InMemoryRegistry
from logit_service.snapshots.incoming import IncomingSnapshot
from logit_service.snapshots.store import SnapshotStore
from logit_service.snapshots.writer import write_snapshot
from logit_service.v1 import logit_service_pb2 as pb


@pytest.fixture(scope="module")
def weights() -> tuple[dict, dict]:
    model = build_tiny_model(seed=0, vocab_size=256, hidden_size=32, layers=1)
    return model.config.to_dict(), {k: t.detach().clone() for k, t in model.state_dict().items()}


@pytest.fixture
def messages(tmp_path, weights) -> list[pb.SnapshotChunk]:
    config, state = weights
    trainer = tmp_path / "trainer"
    write_snapshot(trainer, 0, state, config)
    return list(plan_upload(trainer / "v00000000", None).messages(chunk_bytes=4096))


def _incoming(tmp_path: Path, max_bytes: int = 1 << 30) -> IncomingSnapshot:
    root = tmp_path / "snapshots"
    root.mkdir(exist_ok=True)
    return IncomingSnapshot(SnapshotStore(root, InMemoryRegistry(), retention_window=2, cache_bytes=0), max_bytes=max_bytes)


def _header(messages, **file_changes) -> pb.SnapshotChunk:
    header = pb.SnapshotChunk()
    header.CopyFrom(messages[0])
    for key, value in file_changes.items():
        setattr(header.header.files[-1], key, value)  # the weights file (files are sorted by name)
    return header


def test_a_file_whose_sha256_is_no_digest_is_refused_for_it_whatever_its_size(tmp_path, messages):
    header = _header(messages, sha256="Z" * 64)
    with pytest.raises(InvalidRequest, match="file 'model.safetensors': size must be >= 0 and sha256 64 lowercase hex digits"):
        _incoming(tmp_path).take(header)


def test_a_file_sent_compact_without_a_base_version_is_refused_by_name(tmp_path, messages):
    header = _header(messages, compact=True)
    with pytest.raises(InvalidRequest) as e:
        _incoming(tmp_path).take(header)
    assert e.value.message == "file 'model.safetensors' is sent compact, but only weights files with a base version may be"


def test_a_snapshot_over_the_byte_limit_reports_the_limit_and_its_size(tmp_path, messages):
    header = messages[0].header
    size = len(header.manifest_json) + sum(f.size for f in header.files)
    with pytest.raises(RequestTooLarge) as e:
        _incoming(tmp_path, max_bytes=size - 1).take(messages[0])
    assert e.value.metadata == {"limit": "max_upload_bytes", "limit_value": str(size - 1), "value": str(size)}


def test_an_abandoned_transfer_refuses_every_later_write_and_leaves_no_staging(tmp_path, messages):
    incoming = _incoming(tmp_path)
    incoming.take(messages[0])
    incoming.take(messages[1])
    hashers = [t.name for t in threading.enumerate() if t.name.startswith("logit-upload-hash")]
    assert hashers, "the received bytes are hashed on a thread named for it"
    incoming.discard()
    with pytest.raises(InvalidRequest, match="the transfer was abandoned"):
        incoming.take(messages[2])
    assert not incoming.dir.exists()

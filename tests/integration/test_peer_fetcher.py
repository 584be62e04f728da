"""The peer fetcher against real servers: the first peer that has a version supplies it, verified; a copy
that is refused, too large, late or unauthorised leaves nothing in the directory."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import grpc
import pytest
from logit_client import LogitClient

from logit_service.registry.memory import InMemoryRegistry
from logit_service.server.peer_fetch import PeerFetcher
from logit_service.snapshots.manifest import read_manifest
from logit_service.snapshots.store import SnapshotStore
from tests.certs import make_pki
from tests.redis_server import free_port

PUBLISHER = "publisher-token-0123456789abcdef"
READER = "reader-token-0123456789abcdefgh"
LOGGER = "logit_service.server.peer_fetch"


@pytest.fixture
def peer(make_server, tmp_path, trained):
    """A replica holding versions 0 and 1."""
    (tmp_path / "peer").mkdir()
    server = make_server(tmp_path / "peer", ewma_enabled=False)
    with LogitClient(server.address, max_retries=0) as client:
        for v in (0, 1):
            client.upload_version(v, trained.states[v], model_config=trained.config)
    return server


def _store(tmp_path: Path) -> SnapshotStore:
    return SnapshotStore(tmp_path / "own", InMemoryRegistry(), retention_window=4, cache_bytes=0)


def _fetcher(store: SnapshotStore, *peers: str, **kwargs) -> PeerFetcher:
    kwargs.setdefault("max_bytes", 1 << 30)
    kwargs.setdefault("timeout_s", 60)
    return PeerFetcher(store, list(peers), **kwargs)


def _held(store: SnapshotStore) -> list[str]:
    return sorted(p.name for p in store.root.iterdir()) if store.root.exists() else []


def _digest(server, version: int) -> str:
    return read_manifest(Path(server.running.store.root) / f"v{version:08d}").digest


def test_a_fetcher_needs_a_peer(tmp_path):
    with pytest.raises(ValueError, match="at least one peer"):
        PeerFetcher(_store(tmp_path), [], max_bytes=1, timeout_s=1)


def test_the_first_peer_that_answers_supplies_the_version_verified(tmp_path, peer, caplog):
    store = _store(tmp_path)
    gone = f"127.0.0.1:{free_port()}"  # nothing listens there
    fetcher = _fetcher(store, gone, peer.address)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert fetcher.fetch(1) is True
    assert read_manifest(store.root / "v00000001").digest == _digest(peer, 1)
    assert (store.root / "v00000001" / "model.safetensors").read_bytes() == (
        Path(peer.running.store.root) / "v00000001" / "model.safetensors"
    ).read_bytes()
    assert fetcher.fetched == 1
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    prefix = f"version 1 not fetched from {gone}: UNAVAILABLE "
    assert messages[0].startswith(prefix) and messages[0][len(prefix):] not in ("", "None")  # gRPC's details
    assert messages[-1] == f"fetched version 1 from {peer.address}"
    # Already here: answered from the directory, no second copy.
    assert fetcher.fetch(1) is True and fetcher.fetched == 1


def test_a_version_no_peer_has_is_not_fetched(tmp_path, peer):
    store = _store(tmp_path)
    fetcher = _fetcher(store, peer.address)
    assert fetcher.fetch(7) is False
    assert fetcher.fetched == 0
    assert [p for p in _held(store) if not p.startswith(".")] == []


def test_a_copy_with_another_digest_than_the_registrys_is_refused_and_not_kept(tmp_path, peer, caplog):
    store = _store(tmp_path)
    fetcher = _fetcher(store, peer.address)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert fetcher.fetch(0, expected_digest=_digest(peer, 1)) is False
    assert not (store.root / "v00000000").exists()
    assert not list(store.root.glob(".tmp-*"))
    (refusal,) = [r for r in caplog.records if r.name == LOGGER]
    assert refusal.levelno == logging.WARNING
    assert refusal.getMessage() == (
        f"version 0 from {peer.address} refused: its copy has digest {_digest(peer, 0)}, but the registry names "
        f"{_digest(peer, 1)}"
    )
    assert fetcher.fetch(0, expected_digest=_digest(peer, 0)) is True and fetcher.fetched == 1


def test_a_copy_over_the_byte_limit_is_refused_and_not_kept(tmp_path, peer):
    store = _store(tmp_path)
    assert _fetcher(store, peer.address, max_bytes=1000).fetch(0) is False
    assert not (store.root / "v00000000").exists()
    assert not list(store.root.glob(".tmp-*"))


def test_messages_over_the_receive_limit_end_the_copy(tmp_path, peer):
    store = _store(tmp_path)
    assert _fetcher(store, peer.address, max_message_bytes=1024).fetch(0) is False
    assert not (store.root / "v00000000").exists()
    assert _fetcher(store, peer.address).fetch(0) is True  # the default limit holds the peer's chunks


def test_a_copy_that_cannot_finish_in_time_is_abandoned(tmp_path, peer, caplog):
    store = _store(tmp_path)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert _fetcher(store, peer.address, timeout_s=1e-4).fetch(0) is False
    assert "DEADLINE_EXCEEDED" in caplog.text
    assert not (store.root / "v00000000").exists()


def test_a_peer_that_needs_a_token_gets_the_one_given(make_server, tmp_path, trained):
    (tmp_path / "guarded").mkdir()
    guarded = make_server(tmp_path / "guarded", ewma_enabled=False, auth_token=PUBLISHER, reader_token=READER)
    with LogitClient(guarded.address, max_retries=0, auth_token=PUBLISHER) as client:
        client.upload_version(0, trained.states[0], model_config=trained.config)
    store = _store(tmp_path)
    assert _fetcher(store, guarded.address).fetch(0) is False
    assert _fetcher(store, guarded.address, auth_token="not-the-token-0123456789abcdef").fetch(0) is False
    assert _fetcher(store, guarded.address, auth_token=READER).fetch(0) is True


def test_a_peer_over_tls_is_reached_with_the_credentials_given(make_server, tmp_path, trained):
    for name in ("pki", "tls"):
        (tmp_path / name).mkdir()
    pki = make_pki(tmp_path / "pki")
    tls_peer = make_server(tmp_path / "tls", ewma_enabled=False, tls_cert_file=pki.server_cert, tls_key_file=pki.server_key)
    credentials = grpc.ssl_channel_credentials(root_certificates=Path(pki.ca).read_bytes())
    with LogitClient(tls_peer.address, max_retries=0, credentials=credentials) as client:
        client.upload_version(0, trained.states[0], model_config=trained.config)
    store = _store(tmp_path)
    assert _fetcher(store, tls_peer.address).fetch(0) is False  # plaintext to a TLS port
    assert _fetcher(store, tls_peer.address, credentials=credentials).fetch(0) is True


def test_two_threads_asking_for_one_version_copy_it_once(tmp_path, peer):
    store = _store(tmp_path)
    fetcher = _fetcher(store, peer.address)
    start = threading.Barrier(2)
    answers: list[bool] = []

    def ask() -> None:
        start.wait(30)
        answers.append(fetcher.fetch(1))

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert answers == [True, True]
    assert fetcher.fetched == 1


def test_a_peer_holding_other_weights_is_passed_over_for_one_with_the_registered_ones(make_server, tmp_path, trained, peer):
    # Another replica's version 0 holds other weights (a deployment's mistake, or a stale directory).
    (tmp_path / "stale").mkdir()
    stale = make_server(tmp_path / "stale", ewma_enabled=False)
    with LogitClient(stale.address, max_retries=0) as client:
        client.upload_version(0, trained.states[1], model_config=trained.config)
    assert _digest(stale, 0) != _digest(peer, 0)
    store = _store(tmp_path)
    fetcher = _fetcher(store, stale.address, peer.address)
    assert fetcher.fetch(0, expected_digest=_digest(peer, 0)) is True
    assert read_manifest(store.root / "v00000000").digest == _digest(peer, 0)

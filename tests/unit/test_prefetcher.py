"""The prefetcher: one version read ahead at a time, handed over once, skipped when already at hand."""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path

import pytest
import torch

from logit_service.errors import SnapshotCorrupt
from logit_service.registry.memory import InMemoryRegistry
from logit_service.server.prefetch import Prefetcher
from logit_service.snapshots.cache import CachedWeights
from logit_service.snapshots.store import SnapshotStore
from logit_service.snapshots.writer import WEIGHTS_NAME, write_snapshot
from tests.helpers import distinct_versions, flip_last_byte, wait_for

WAIT_S = 30


@pytest.fixture(scope="module")
def weights() -> list[tuple[dict[str, torch.Tensor], dict]]:
    config, states = distinct_versions(3)
    return [(state, config) for state in states]


class Served:
    """A store of three published versions, no RAM cache (every load reads the disk), and its prefetcher."""

    def __init__(self, root: Path, weights, *, cache_bytes: int = 0) -> None:
        self.store = SnapshotStore(root, InMemoryRegistry(), retention_window=5, cache_bytes=cache_bytes)
        for v, (state, config) in enumerate(weights):
            self.store.publish(v, write_snapshot(root, v, state, config))
        self.resident = "0"
        self.prefetcher = Prefetcher(self.store, lambda: self.resident)
        self.weights = weights

    def record(self, version: int):
        return self.store.resolve(version)

    def assert_weights_of(self, got: CachedWeights, version: int) -> None:
        assert got.digest == self.record(version).digest
        state = self.weights[version][0]
        assert set(got.state_dict) == set(state)
        assert all(torch.equal(got.state_dict[k], state[k]) for k in state)


@pytest.fixture
def served(tmp_path, weights):
    s = Served(tmp_path / "snapshots", weights)
    yield s
    s.prefetcher.close()


def test_a_version_read_ahead_is_handed_over_once_without_a_second_read(served):
    loads = served.store.loads
    served.prefetcher.start(served.record(1), "1")
    got = served.prefetcher.take(served.record(1), "1")
    served.assert_weights_of(got, 1)
    assert served.store.loads == loads + 1
    assert (served.prefetcher.started, served.prefetcher.used) == (1, 1)
    assert served.prefetcher.take(served.record(1), "1") is None  # taken: the next caller loads it itself


def test_the_resident_version_is_not_read_again(served):
    served.prefetcher.start(served.record(0), "0")
    assert served.prefetcher.started == 0
    assert served.prefetcher.take(served.record(0), "0") is None


def test_a_version_in_the_ram_cache_is_not_read_again_unless_its_digest_differs(tmp_path, weights):
    served = Served(tmp_path / "snapshots", weights, cache_bytes=1 << 30)
    try:
        served.store.load(served.record(1), "1")  # now cached
        loads = served.store.loads
        served.prefetcher.start(served.record(1), "1")
        assert (served.prefetcher.started, served.store.loads) == (0, loads)
        # The same key cached with other weights (a version republished under it): read the record's own.
        other = dataclasses.replace(served.record(1), digest=served.record(2).digest)
        served.store.cache.put(dataclasses.replace(served.store.cache.peek("1"), digest="0" * 64))
        served.prefetcher.start(served.record(1), "1")
        assert served.prefetcher.started == 1
        served.assert_weights_of(served.prefetcher.take(served.record(1), "1"), 1)
        assert served.prefetcher.take(other, "1") is None
    finally:
        served.prefetcher.close()


def test_asking_twice_for_the_same_version_reads_it_once(served):
    loads = served.store.loads
    for _ in range(3):
        served.prefetcher.start(served.record(1), "1")
    served.assert_weights_of(served.prefetcher.take(served.record(1), "1"), 1)
    assert served.prefetcher.started == 1 and served.store.loads == loads + 1


def test_a_newer_need_replaces_a_version_never_taken(served):
    served.prefetcher.start(served.record(1), "1")
    served.prefetcher.start(served.record(2), "2")
    assert served.prefetcher.started == 2
    assert served.prefetcher.take(served.record(1), "1") is None
    served.assert_weights_of(served.prefetcher.take(served.record(2), "2"), 2)
    assert served.prefetcher.used == 1


def test_weights_are_handed_over_only_for_the_key_and_digest_they_were_read_for(served):
    served.prefetcher.start(served.record(1), "1")
    assert served.prefetcher.take(served.record(1), "other key") is None
    assert served.prefetcher.take(served.record(2), "1") is None  # another digest under the same key
    served.assert_weights_of(served.prefetcher.take(served.record(1), "1"), 1)


def test_a_failed_read_ahead_hands_over_nothing_and_the_callers_own_load_says_why(served, caplog):
    flip_last_byte(served.store.path_of(served.record(1)) / WEIGHTS_NAME)
    served.prefetcher.start(served.record(1), "1")
    with caplog.at_level(logging.DEBUG, logger="logit_service.server.prefetch"):
        assert served.prefetcher.take(served.record(1), "1") is None
    assert served.prefetcher.used == 0
    (note,) = [r.getMessage() for r in caplog.records if r.name == "logit_service.server.prefetch"]
    assert note.startswith("prefetch of 1 failed: v00000001/model.safetensors")
    with pytest.raises(SnapshotCorrupt):
        served.store.load(served.record(1), "1")


def test_a_version_a_queued_call_names_is_resolved_and_read_off_the_callers_thread(served):
    callers = threading.current_thread()
    resolved_on: list[threading.Thread] = []
    resolve = served.store.resolve

    def watched_resolve(version):
        resolved_on.append(threading.current_thread())
        return resolve(version)

    served.store.resolve = watched_resolve
    served.prefetcher.start_version(2)
    wait_for(lambda: served.prefetcher.started == 1, "version 2's read ahead to start")
    served.store.resolve = resolve
    assert resolved_on and resolved_on[0] is not callers
    served.assert_weights_of(served.prefetcher.take(served.record(2), "2"), 2)


def test_a_version_that_cannot_be_resolved_starts_nothing(served):
    served.prefetcher.start_version(99)
    served.prefetcher.start_version(1)  # runs after the first on the one prefetch thread
    wait_for(lambda: served.prefetcher.started == 1, "version 1's read ahead to start")
    served.assert_weights_of(served.prefetcher.take(served.record(1), "1"), 1)


def test_closing_drops_what_was_read_ahead(served):
    served.prefetcher.start(served.record(1), "1")
    served.prefetcher.close()
    assert served.prefetcher.take(served.record(1), "1") is None
    with pytest.raises(RuntimeError):
        served.prefetcher.start_version(2)  # its thread is gone


def test_weights_are_read_under_the_key_they_are_asked_for(tmp_path, weights):
    served = Served(tmp_path / "snapshots", weights, cache_bytes=1 << 30)
    try:
        served.prefetcher.start(served.record(1), "another key")
        served.assert_weights_of(served.prefetcher.take(served.record(1), "another key"), 1)
        assert served.store.cache.peek("another key") is not None and served.store.cache.peek("1") is None
    finally:
        served.prefetcher.close()


class _HeldLoads:
    """store.load held until released, recording the thread of each load and how many ran at once."""

    def __init__(self, store) -> None:
        self.release = threading.Event()
        self.threads: list[str] = []
        self.running, self.most = 0, 0
        self._lock = threading.Lock()
        self._load = store.load
        store.load = self

    def __call__(self, record, key=None):
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.threads.append(threading.current_thread().name)
        try:
            assert self.release.wait(WAIT_S)
            return self._load(record, key)
        finally:
            with self._lock:
                self.running -= 1


def test_read_aheads_run_one_at_a_time_on_the_prefetch_thread(served):
    held = _HeldLoads(served.store)
    served.prefetcher.start(served.record(1), "1")
    served.prefetcher.start(served.record(2), "2")  # queued behind the first on the one thread
    wait_for(lambda: held.threads, "the first read ahead to start")
    assert not served.prefetcher._pool._work_queue.empty()  # noqa: SLF001 - the second waits its turn
    held.release.set()
    served.assert_weights_of(served.prefetcher.take(served.record(2), "2"), 2)
    assert held.most == 1
    assert len(held.threads) == 2 and all(name.startswith("logit-prefetch") for name in held.threads)


def test_closing_waits_for_the_read_under_way_and_cancels_the_queued_ones(served):
    held = _HeldLoads(served.store)
    record = served.record(1)
    resolved: list[int] = []
    resolve = served.store.resolve
    served.store.resolve = lambda version: resolved.append(version) or resolve(version)
    served.prefetcher.start(record, "1")
    wait_for(lambda: held.threads, "the read ahead to start")
    served.prefetcher.start_version(2)  # queued behind it
    closer = threading.Thread(target=served.prefetcher.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # the read under way is not abandoned half done
    held.release.set()
    closer.join(WAIT_S)
    assert not closer.is_alive() and held.running == 0
    assert resolved == []  # the queued one never ran

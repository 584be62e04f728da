"""The EWMA follower: folds every retained version in order, one fold at a time, off the caller's thread;
a fold that fails is logged and leaves the previous average registered."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from logit_service.registry.memory import InMemoryRegistry
from logit_service.server.ewma_follower import EwmaFollower
from logit_service.snapshots.store import SnapshotStore
from logit_service.snapshots.writer import WEIGHTS_NAME, write_snapshot
from tests.helpers import distinct_versions, flip_last_byte

BETA = 0.5
WAIT_S = 60


@pytest.fixture(scope="module")
def states() -> tuple[dict, list[dict]]:
    return distinct_versions(4)


@pytest.fixture
def executor():
    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="test-io")
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


def _store(root: Path) -> SnapshotStore:
    return SnapshotStore(root, InMemoryRegistry(), retention_window=4, cache_bytes=0)


def _publish(store: SnapshotStore, states, version: int):
    config, weights = states
    record, _ = store.publish(version, write_snapshot(store.root, version, weights[version], config))
    return record


def test_a_publication_folds_every_retained_version_not_yet_folded_in_order(tmp_path, states, executor):
    store = _store(tmp_path / "snapshots")
    follower = EwmaFollower(store, beta=BETA, executor=executor)
    assert follower.track.beta == BETA
    records = [_publish(store, states, v) for v in range(3)]
    folded: list[int] = []
    fold = follower.track.fold
    follower.track.fold = lambda record: folded.append(record.policy_version) or fold(record)
    follower.on_published(records[2])  # announces only the newest; the two before it were never announced
    assert follower.catch_up().result(WAIT_S) == []  # queued behind the first: nothing left to fold
    assert folded == [0, 1, 2]
    assert follower.track.folded_versions == [0, 1, 2]
    assert store.registry.get_ewma().policy_version == 2


def test_folds_run_one_at_a_time_on_the_executor(tmp_path, states, executor):
    store = _store(tmp_path / "snapshots")
    follower = EwmaFollower(store, beta=BETA, executor=executor)
    _publish(store, states, 0)
    caller = threading.current_thread()
    active, most, threads = [0], [0], []
    overlapped = threading.Event()
    lock = threading.Lock()
    catch_up = follower.track.catch_up

    def watched_catch_up():
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
            threads.append(threading.current_thread())
            if active[0] > 1:
                overlapped.set()
        # Long enough for a second fold to start, were folds not serialised; it never is here.
        overlapped.wait(0.2)
        try:
            return catch_up()
        finally:
            with lock:
                active[0] -= 1

    follower.track.catch_up = watched_catch_up
    futures = [follower.catch_up() for _ in range(4)]
    assert [f.result(WAIT_S) for f in futures] == [[0], [], [], []]
    assert most[0] == 1
    assert caller not in threads


def _records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "logit_service.server.ewma_follower"]


def test_a_failed_fold_is_logged_and_leaves_the_previous_average(tmp_path, states, executor, caplog):
    store = _store(tmp_path / "snapshots")
    follower = EwmaFollower(store, beta=BETA, executor=executor)
    follower.on_published(_publish(store, states, 0))
    assert follower.catch_up().result(WAIT_S) == []
    before = store.registry.get_ewma()
    record = _publish(store, states, 1)
    flip_last_byte(store.path_of(record) / WEIGHTS_NAME)  # the fold's verified load refuses it
    with caplog.at_level(logging.ERROR, logger="logit_service.server.ewma_follower"):
        future = follower.catch_up()
        with pytest.raises(Exception) as raised:
            future.result(WAIT_S)
        # The report is a done-callback: it may run just after result() has returned.
        deadline = time.monotonic() + WAIT_S
        while not _records(caplog) and time.monotonic() < deadline:
            time.sleep(0.005)
    assert store.registry.get_ewma() == before
    assert follower.track.folded_versions == [0]
    failures = _records(caplog)
    assert len(failures) == 1 and failures[0].levelno == logging.ERROR
    assert failures[0].getMessage() == f"EWMA fold failed: {raised.value}"


def test_a_fold_cancelled_before_it_ran_is_not_reported_as_failed(tmp_path, states, caplog):
    store = _store(tmp_path / "snapshots")
    one = ThreadPoolExecutor(max_workers=1)
    release = threading.Event()
    try:
        follower = EwmaFollower(store, beta=BETA, executor=one)
        one.submit(release.wait, WAIT_S)  # the only worker is busy: the fold below waits in the queue
        with caplog.at_level(logging.DEBUG):
            future = follower.catch_up()
            assert future.cancel()
            release.set()
            one.shutdown(wait=True)
    finally:
        release.set()
        one.shutdown(wait=True)
    assert future.cancelled()
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert follower.track.folded_versions == []

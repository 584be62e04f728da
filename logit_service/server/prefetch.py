"""Reads and verifies the next version a batch needs while the compute thread scores the current one.

A version that is neither resident nor in the RAM cache costs a verified disk load (read + sha256)
before its forward; done on the compute thread, that time adds to the forwards'. The engine names the
next version of its batch (or of a call still queued) as it starts a forward; this thread loads it
meanwhile. The loaded weights are held here until the engine takes them, so prefetching works even when
the RAM cache is too small to keep them: at most one prefetched version is held at a time, on top of
the cache's budget.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from logit_service.errors import LogitServiceError
from logit_service.snapshots.cache import CachedWeights
from logit_service.snapshots.store import SnapshotStore
from logit_service.tensor_threads import serial_tensor_ops
from logit_service.types import VersionRecord

log = logging.getLogger(__name__)


class Prefetcher:
    def __init__(self, store: SnapshotStore, resident_key) -> None:
        self.store = store
        self._resident_key = resident_key  # () -> the key of the weights in the model now
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="logit-prefetch", initializer=serial_tensor_ops)
        self._lock = threading.Lock()
        self._slot: tuple[str, str, Future] | None = None  # (key, digest, load)
        self.started = 0  # loads begun here, and those whose weights a forward then used (metrics)
        self.used = 0

    def start(self, record: VersionRecord, key: str) -> None:
        """Begins loading `record` unless it is resident, cached, or already being loaded."""
        if key == self._resident_key():
            return
        cached = self.store.cache.peek(key)
        if cached is not None and cached.digest == record.digest:
            return
        with self._lock:
            if self._slot is not None and self._slot[:2] == (key, record.digest):
                return
            # One version held at a time: a newer need replaces one never taken (its caller went away).
            self._slot = (key, record.digest, self._pool.submit(self.store.load, record, key))
            self.started += 1

    def start_version(self, policy_version: int) -> None:
        """The same for a version a queued call names; resolved on the prefetch thread, not here."""
        self._pool.submit(self._resolve_and_start, policy_version)

    def _resolve_and_start(self, policy_version: int) -> None:
        try:
            record = self.store.resolve(policy_version)
        except LogitServiceError:
            return  # the call itself will get the error when its turn comes
        self.start(record, str(policy_version))

    def take(self, record: VersionRecord, key: str) -> CachedWeights | None:
        """The prefetched weights of `record` (waiting for their load to end), or None: load them yourself.

        A failed prefetch also answers None, so the caller's own load raises the error with its status.
        """
        with self._lock:
            slot = self._slot
            if slot is None or slot[:2] != (key, record.digest):
                return None
            self._slot = None
        try:
            weights = slot[2].result()
        except Exception as e:  # noqa: BLE001 - reported by the caller's own load
            log.debug("prefetch of %s failed: %s", key, e)
            return None
        self.used += 1
        return weights

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._slot = None

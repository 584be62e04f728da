"""Keeps this replica's EWMA track in step with the version stream, off the request path.

Folds run one at a time on the I/O executor; a failed fold is logged and leaves the previous average
serving (the exact route is unaffected).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from logit_service.snapshots.ewma_track import EwmaTrack
from logit_service.snapshots.store import SnapshotStore
from logit_service.types import VersionRecord

log = logging.getLogger(__name__)


class EwmaFollower:
    def __init__(self, store: SnapshotStore, *, beta: float, executor: ThreadPoolExecutor) -> None:
        self.track = EwmaTrack(store, beta=beta)
        self._executor = executor
        self._lock = threading.Lock()  # folds must happen one at a time and in publication order

    def on_published(self, record: VersionRecord) -> None:
        # Always fold every retained version in order, never just the one announced: replicas that
        # share a registry then fold identical sequences from identical states and agree bit for bit.
        self.catch_up()

    def catch_up(self) -> Future:
        """Folds what this replica has not seen fold yet (other replicas' publications, restarts)."""
        return self._submit(self.track.catch_up)

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        def run() -> Any:
            with self._lock:
                return fn(*args)

        future = self._executor.submit(run)
        future.add_done_callback(self._report)
        return future

    @staticmethod
    def _report(future: Future) -> None:
        if not future.cancelled() and future.exception() is not None:
            log.error("EWMA fold failed: %s", future.exception())

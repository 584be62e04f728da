"""Cross-caller batching of Score: calls waiting for the compute thread are scored as one engine call,
so sequences of many callers that need the same version share forwards.

When to start a batch: when the compute thread is free, with what is queued, after at most one short
wait, by one of two rules. The batcher counts the calls in the server (arrived, not yet answered) and
remembers the peak since the last batch started.
- Several callers active (the last period's peak above one), typically clients in a loop that send
  their next call as soon as their answer arrives: the batch waits until that many calls are queued,
  for at most `coalesce_window_s` and a tenth of the compute of a batch of that many calls (the time
  per call of the fullest of the last batches, times the calls expected), so the wait never costs
  more than ~10% of the throughput even when they do not come. Per call, from the fullest batch: a
  small batch in a shrunk tile (tiles.py) computes quickly, and a bound taken from it would cut the
  wait for the next full batch short. Callers that did not come within the window are taken as gone:
  the next batch expects only those still in the server.
- A call alone: it may be the first of a burst (a trainer's ranks all send after each step). While the
  queued sequences leave a free row in their forwards (the backend's `room_for_company`), the batch
  waits as long as calls keep arriving less than `burst_gap_s` apart, the gap at most 2% of the last
  batch's compute and the whole wait a tenth of it. A caller really alone pays one gap; a call that
  fills its tile, or a backend whose every sequence takes a forward of its own, never waits.
Without these waits, the first caller to come back would start a batch alone and the rest would queue
behind it: two forwards where one would do.

A call waits for its answer, not for the drain it submitted: drains and calls are one to one in
number, not in which batch answers which call.

Answers do not depend on the batch (the backend's forwards are batch-invariant), and each call keeps its
own deadline, cancellation and errors (ScoringEngine.score_many).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from logit_service.errors import ServiceUnavailable
from logit_service.server.engine import ScoreOptions, ScoreOutcome, ScoringEngine
from logit_service.types import ScoreSequence


@dataclass
class _Call:
    sequences: list[ScoreSequence]
    options: ScoreOptions
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop

    @property
    def tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.sequences)


class ScoreBatcher:
    def __init__(
        self, engine: ScoringEngine, compute: ThreadPoolExecutor, *, max_tokens: int, coalesce_window_s: float,
        burst_gap_s: float,
    ) -> None:
        self.engine = engine
        self.compute = compute
        self.max_tokens = max_tokens  # of one batch, as of one request: bounds what a batch holds
        self.coalesce_window_s = coalesce_window_s
        self.burst_gap_s = burst_gap_s
        self._queue: deque[_Call] = deque()
        self._arrived = threading.Condition()
        self._in_server = 0  # calls arrived and not yet answered
        self._peak = 0  # most calls in the server at once since the last batch started
        self._expected = 0  # what the next batch waits for (the previous period's peak)
        # Engine time per call of the last batches, whose fastest (the fullest batch's) bounds the wait
        # for the calls expected; and the last batch's whole time, which bounds the wait of a burst.
        self._recent_s_per_call: deque[float] = deque(maxlen=8)
        self._last_batch_s = 0.0
        self.batches = 0  # engine calls made, and the Score calls they answered (metrics)
        self.calls = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def in_server(self) -> int:
        """Calls arrived and not yet answered: what tells a lone caller (start at once) from several."""
        return self._in_server

    async def score(self, sequences: list[ScoreSequence], options: ScoreOptions) -> ScoreOutcome:
        loop = asyncio.get_running_loop()
        call = _Call(sequences, options, loop.create_future(), loop)
        with self._arrived:
            self._queue.append(call)
            self._in_server += 1
            self._peak = max(self._peak, self._in_server)
            self._arrived.notify_all()
        # One drain per call keeps the compute queue's depth meaningful, and a drain for every queued
        # call. The call waits for its answer, not for its own drain: an earlier drain may have taken it,
        # and its own may then take (and wait for) the next batch, which would hold this answer back by a
        # whole forward while the callers of that batch wait for it.
        try:
            drain = self.compute.submit(self._drain)
            drain.add_done_callback(lambda done: _drain_ended(call, done))
            return await call.future
        except asyncio.CancelledError:
            call.future.cancel()  # the caller is gone: a batch not yet taken skips it, a taken one drops its answer
            raise
        finally:
            with self._arrived:
                self._in_server -= 1

    def _drain(self) -> None:
        batch = self._take()
        if not batch:
            return
        self.batches += 1
        self.calls += len(batch)
        try:
            with self._arrived:
                upcoming = sorted({sp.policy_version for c in self._queue for s in c.sequences for sp in s.spans})
            started = time.monotonic()
            outcomes = self.engine.score_many([(c.sequences, c.options) for c in batch], upcoming=upcoming)
            self._last_batch_s = time.monotonic() - started
            self._recent_s_per_call.append(self._last_batch_s / len(batch))
        except BaseException as e:  # a bug, not a caller's error: every call of the batch reports it
            outcomes = [e] * len(batch)
        for call, outcome in zip(batch, outcomes):
            _answer(call, outcome)

    def _take(self) -> list[_Call]:
        with self._arrived:
            short = False  # fewer came than were expected
            if self._queue and self._expected > 1:
                short = not self._wait_for_expected()
            elif self._queue:
                self._wait_for_burst()
            batch: list[_Call] = []
            tokens = 0
            while self._queue and (not batch or tokens + self._queue[0].tokens <= self.max_tokens):
                call = self._queue.popleft()
                if call.future.done():  # cancelled while queued: its caller is gone
                    continue
                batch.append(call)
                tokens += call.tokens
            if batch:
                # Callers that did not come within the window are taken as gone: the next batch does not
                # wait for them again.
                self._expected = min(self._peak, self._in_server) if short else self._peak
                self._peak = self._in_server
            return batch

    def _wait_for_expected(self) -> bool:
        """Until as many calls are queued as were active, for at most the window and a tenth of the
        compute of a batch of that many calls; whether they came (called with the lock held)."""
        per_call = min(self._recent_s_per_call, default=0.0)
        window = min(self.coalesce_window_s, 0.1 * per_call * self._expected)
        deadline = time.monotonic() + window
        while len(self._queue) < self._expected and (left := deadline - time.monotonic()) > 0:
            self._arrived.wait(left)
        return len(self._queue) >= self._expected

    def _wait_for_burst(self) -> None:
        """A call that comes alone may be the first of a burst: callers that send at the same moment, as
        a trainer's ranks do after each step. Scored at once, it would take a forward of its own, and
        the rest of the burst would queue for the next one. So while the queued calls leave room in
        their forwards, wait as long as calls keep arriving less than a gap apart: a gap of at most 2%
        of the last batch's compute, a whole wait of at most a tenth of it (and the window). A caller
        that is really alone pays one gap (called with the lock held)."""
        gap = min(self.burst_gap_s, 0.02 * self._last_batch_s)
        if gap <= 0:
            return
        deadline = time.monotonic() + min(self.coalesce_window_s, 0.1 * self._last_batch_s)
        while self._room():
            queued = len(self._queue)
            if (left := deadline - time.monotonic()) <= 0:
                return
            self._arrived.wait(min(gap, left))
            if len(self._queue) == queued:  # none came within the gap: the burst is over
                return

    def _room(self) -> bool:
        lengths = [len(s.token_ids) for c in self._queue for s in c.sequences]
        return sum(lengths) < self.max_tokens and self.engine.backend.room_for_company(lengths)


def _drain_ended(call: _Call, drain: Future) -> None:
    """A drain that never ran (the executor shut down) or failed outside the engine call settles its
    call, if nothing else has: no caller waits forever. A drain that never ran answers UNAVAILABLE,
    which clients retry elsewhere: cancelling the call's future instead would end its handler without
    a status, and the caller would wait out its deadline."""
    if drain.cancelled():
        _answer(call, ServiceUnavailable("the server is shutting down; this call was not scored (retry on another replica)"))
    elif (error := drain.exception()) is not None:
        _answer(call, error)


def _answer(call: _Call, outcome) -> None:
    """Settles the call's future on its own loop, from the compute thread."""
    try:
        call.loop.call_soon_threadsafe(_settle, call.future, outcome)
    except RuntimeError:  # the loop closed (shutdown): nobody is waiting
        pass


def _settle(future: asyncio.Future, outcome) -> None:
    if future.done():
        return
    if isinstance(outcome, asyncio.CancelledError):
        future.cancel()
    elif isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)

"""Cross-caller batching of Score: calls waiting for the compute thread are scored as one engine call,
so sequences of many callers that need the same version share forwards.

When to start a batch: whatever is queued when the compute thread is free. A call that finds the
thread idle starts at once, so a lone caller never waits for company. One refinement: the batcher
counts the calls in the server (arrived, not yet answered) and remembers the peak since the last batch
started. When that peak was above one, several callers are active, typically clients in a loop that
send their next call as soon as their answer arrives; the next batch then waits until that many calls are queued, for at most `coalesce_window_s` and
at most a tenth of the compute time of the batch it waits for (the previous batch's time per call times
the calls expected), so the wait never costs more than ~10% of the throughput, even when the expected
callers do not come. Per call, not per batch: a small batch in a shrunk tile (tiles.py) computes
quickly, and a bound taken from it would cut the wait for the next full batch short. Without the wait, the first of them to come back
would start a batch alone and the rest would queue behind it: two forwards where one would do. The wait
ends as soon as the expected count is queued; when callers left, it costs one window once, and the
lower peak it observes is what the next batch expects.

Answers do not depend on the batch (the backend's forwards are batch-invariant), and each call keeps its
own deadline, cancellation and errors (ScoringEngine.score_many).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

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
    def __init__(self, engine: ScoringEngine, compute: ThreadPoolExecutor, *, max_tokens: int, coalesce_window_s: float) -> None:
        self.engine = engine
        self.compute = compute
        self.max_tokens = max_tokens  # of one batch, as of one request: bounds what a batch holds
        self.coalesce_window_s = coalesce_window_s
        self._queue: deque[_Call] = deque()
        self._arrived = threading.Condition()
        self._in_server = 0  # calls arrived and not yet answered
        self._peak = 0  # most calls in the server at once since the last batch started
        self._expected = 0  # what the next batch waits for (the previous period's peak)
        self._compute_s_per_call = 0.0  # the previous batch's engine time per call, which bounds the wait
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
        # One drain per call keeps the compute queue's depth meaningful; a drain that finds its call
        # already taken by an earlier one returns at once.
        try:
            await asyncio.wrap_future(self.compute.submit(self._drain))
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
            self._compute_s_per_call = (time.monotonic() - started) / len(batch)
        except BaseException as e:  # a bug, not a caller's error: every call of the batch reports it
            outcomes = [e] * len(batch)
        for call, outcome in zip(batch, outcomes):
            try:
                call.loop.call_soon_threadsafe(_settle, call.future, outcome)
            except RuntimeError:  # the loop closed (shutdown): nobody is waiting
                pass

    def _take(self) -> list[_Call]:
        with self._arrived:
            window = min(self.coalesce_window_s, 0.1 * self._compute_s_per_call * self._expected)
            if self._queue and self._expected > 1 and window > 0:
                deadline = time.monotonic() + window
                while len(self._queue) < self._expected and (left := deadline - time.monotonic()) > 0:
                    self._arrived.wait(left)
            batch: list[_Call] = []
            tokens = 0
            while self._queue and (not batch or tokens + self._queue[0].tokens <= self.max_tokens):
                call = self._queue.popleft()
                if call.future.done():  # cancelled while queued: its caller is gone
                    continue
                batch.append(call)
                tokens += call.tokens
            if batch:
                self._expected, self._peak = self._peak, self._in_server
            return batch


def _settle(future: asyncio.Future, outcome) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)

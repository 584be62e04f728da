"""The dedicated old-logit model and the interruption barrier: segments pushed as they are generated
are scored in the background while their version is current, and their answers kept for Score.

It owns the queue of submitted segments; the barrier, and a Score whose samples still have segments
queued, wait on it. The forwards themselves run through the scoring engine on the compute thread, one
batch at a time between other requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from logit_service.errors import LogitServiceError, Overloaded
from logit_service.server.engine import ScoreOptions, ScoringEngine
from logit_service.server.segment_results import SegmentResults
from logit_service.server.validation import validate_sequences, validate_vocabulary
from logit_service.types import ScoreSequence, TokenSource

log = logging.getLogger(__name__)


# Python objects around one pending segment (its record, the sequence, the array header, the spans
# tuple): tracemalloc counts ~470 bytes for a two-token, one-span segment; rounded up generously, so a
# bound in bytes cannot be outrun by many tiny segments.
_SEGMENT_OVERHEAD_BYTES = 1024
_SPAN_BYTES = 128


@dataclass(frozen=True, eq=False)  # identity: the same tokens may be submitted twice
class _Segment:
    sequence: ScoreSequence
    temperature: float

    @property
    def tokens(self) -> int:
        """Tokens held, prefix included: what the pending bound must limit is memory."""
        return len(self.sequence.token_ids)

    @property
    def held_bytes(self) -> int:
        seq = self.sequence
        return (
            _SEGMENT_OVERHEAD_BYTES
            + seq.token_ids.nbytes
            + len(seq.sample_id.encode("utf-8", "surrogatepass"))
            + _SPAN_BYTES * len(seq.spans)
        )

    @property
    def newest_version(self) -> int:
        return max(span.policy_version for span in self.sequence.spans)

    def may_answer(self, sequence: ScoreSequence) -> bool:
        """Whether this segment's answer can tile a span of `sequence`: same sample, its tokens a prefix."""
        own = self.sequence.token_ids
        versions = {span.policy_version for span in sequence.spans}
        return (
            len(own) <= len(sequence.token_ids)
            and any(span.policy_version in versions for span in self.sequence.spans)
            and bool((sequence.token_ids[: len(own)] == own).all())
        )


def _answering(candidates: list[tuple[ScoreSequence, list[_Segment]]]) -> set[_Segment]:
    return {segment for sequence, segments in candidates for segment in segments if segment.may_answer(sequence)}


class SegmentFollower:
    def __init__(
        self,
        engine: ScoringEngine,
        kept: SegmentResults,
        compute: ThreadPoolExecutor,
        *,
        max_pending_tokens: int,
        max_pending_bytes: int,
        batch_tokens: int,
        io: ThreadPoolExecutor | None = None,
    ) -> None:
        self.engine = engine
        self.io = io  # for the version lookups at submit time (None: the loop's default executor)
        self.kept = kept
        self.compute = compute
        self.max_pending_tokens = max_pending_tokens
        self.max_pending_bytes = max_pending_bytes
        self.batch_tokens = batch_tokens
        self.failed_segments = 0
        self._pending: list[_Segment] = []
        self._in_flight: list[_Segment] = []
        self._pending_tokens = 0  # of _pending and _in_flight together
        self._pending_bytes = 0
        # Segments not yet scored (pending or in flight), by sample id: what a Score may wait for.
        self._unscored: dict[str, set[_Segment]] = defaultdict(set)
        self.waiting_scores = 0  # Score calls waiting for their samples' segments now
        self._changed = asyncio.Condition()
        self._wakeup = asyncio.Event()

    @property
    def pending_tokens(self) -> int:
        return self._pending_tokens

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    async def submit(self, sequences: list[ScoreSequence], temperature: float) -> int:
        accepted = await asyncio.get_running_loop().run_in_executor(self.io, self._check_scorable, sequences)
        segments = [_Segment(s, temperature) for s in sequences]
        held = sum(s.tokens for s in segments)
        held_bytes = sum(s.held_bytes for s in segments)
        if self.pending_tokens + held > self.max_pending_tokens:
            raise Overloaded(
                f"{self.pending_tokens} tokens are already pending and {held} more would exceed the limit "
                f"of {self.max_pending_tokens}; retry after a Barrier",
                limit="max_pending_tokens", limit_value=self.max_pending_tokens, value=self.pending_tokens + held,
            )
        if self.pending_bytes + held_bytes > self.max_pending_bytes:
            raise Overloaded(
                f"{self.pending_bytes} bytes of segments are already pending and {held_bytes} more would exceed "
                f"the limit of {self.max_pending_bytes}; retry after a Barrier"
            )
        self._pending.extend(segments)
        for segment in segments:
            self._unscored[segment.sequence.sample_id].add(segment)
        self._count(segments, +1)
        self._wakeup.set()
        return accepted

    def _count(self, segments: list[_Segment], sign: int) -> None:
        # Running totals rather than sums over the queue: every submit checks them.
        self._pending_tokens += sign * sum(s.tokens for s in segments)
        self._pending_bytes += sign * sum(s.held_bytes for s in segments)

    def _check_scorable(self, sequences: list[ScoreSequence]) -> int:
        """Refuses, with the status Score would give, what could never be scored: a malformed sequence,
        a version that is unknown or outside the window, a token outside the vocabulary (once a model
        is built). A segment accepted here is only dropped later if its version is evicted before its
        turn. Returns the positions to score."""
        accepted = validate_sequences(
            sequences, max_sequences=self.engine.max_sequences, max_tokens=self.engine.max_tokens
        )
        for version in sorted({span.policy_version for s in sequences for span in s.spans}):
            self.engine.store.resolve(version)
        if self.engine.backend.model is not None:
            validate_vocabulary(sequences, self.engine.backend.vocab_size)
        return accepted

    async def barrier(self, policy_version: int) -> None:
        """Returns once no segment of a version <= policy_version is pending or being scored."""

        def clear() -> bool:
            return all(s.newest_version > policy_version for s in self._pending + self._in_flight)

        async with self._changed:
            await self._changed.wait_for(clear)

    async def until_scored(self, sequences: list[ScoreSequence], temperature: float, deadline: float | None) -> None:
        """Returns once no segment submitted for these sequences is still to be scored, or at the
        deadline (a time.monotonic() value; the Score then meets it and says so).

        A Score must not compute a span itself while the follower is still scoring the segments that
        tile it: one forward over the whole span has another shape than the segments' own forwards
        (each over its own prefix), so its answer, exact as well, would differ from theirs in the last
        bits, and which one a trainer got would depend on how far the follower had got. The awaited
        segments move to the front of the queue, so the wait is for this caller's own work.
        """
        # Dict lookups on the loop; the token comparisons (many, when sample ids repeat) off it.
        candidates = [
            (sequence, [s for s in self._unscored[sequence.sample_id] if s.temperature == temperature])
            for sequence in sequences
            if sequence.sample_id in self._unscored
        ]
        if not candidates:
            return
        awaited = await asyncio.get_running_loop().run_in_executor(self.io, _answering, candidates)
        if not awaited:
            return
        self._pending = [s for s in self._pending if s in awaited] + [s for s in self._pending if s not in awaited]

        def scored() -> bool:
            return not any(s in self._unscored.get(s.sequence.sample_id, ()) for s in awaited)

        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        self.waiting_scores += 1
        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(scored), timeout)
        except TimeoutError:
            pass
        finally:
            self.waiting_scores -= 1

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                self._in_flight = self._take_batch()
                try:
                    await loop.run_in_executor(self.compute, self._score, self._in_flight)
                except Exception:  # never let one bad batch stop the follower
                    log.exception("scoring submitted segments failed")
                async with self._changed:
                    self._count(self._in_flight, -1)
                    for segment in self._in_flight:
                        unscored = self._unscored[segment.sequence.sample_id]
                        unscored.discard(segment)
                        if not unscored:
                            del self._unscored[segment.sequence.sample_id]
                    self._in_flight = []
                    self._changed.notify_all()

    def _take_batch(self) -> list[_Segment]:
        """Oldest first, one temperature per batch, up to batch_tokens (at least one segment)."""
        temperature = self._pending[0].temperature
        batch, rest, tokens = [], [], 0
        for segment in self._pending:
            fits = not batch or tokens + segment.tokens <= self.batch_tokens
            if segment.temperature == temperature and fits and len(batch) < self.engine.max_sequences:
                batch.append(segment)
                tokens += segment.tokens
            else:
                rest.append(segment)
        self._pending = rest
        return batch

    def _score(self, batch: list[_Segment]) -> None:
        try:
            self._keep(batch, [s.sequence for s in batch])
        except LogitServiceError:
            for segment in batch:  # isolate the segment(s) that cannot be scored; keep the rest
                try:
                    self._keep([segment], [segment.sequence])
                except LogitServiceError as e:
                    self.failed_segments += 1
                    log.warning("dropping segment of %r: %s", segment.sequence.sample_id, e.message)

    def _keep(self, batch: list[_Segment], sequences: list[ScoreSequence]) -> None:
        outcome = self.engine.score(sequences, ScoreOptions(temperature=batch[0].temperature))
        for sequence, answer in zip(sequences, outcome.answers):
            for span, span_answer in zip(sequence.spans, answer.spans):
                if span_answer.source == TokenSource.EXACT:
                    self.kept.put(
                        sequence, span, batch[0].temperature, span_answer.logprobs,
                        span_answer.served_version, span_answer.snapshot_digest,
                    )  # fmt: skip

"""The scoring engine: plans a request by version, swaps weights, runs the backend, falls back to the
EWMA where allowed, and stamps every answer with the version and digest that produced it.

Called from one worker thread; it is the only user of the backend.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from logit_service.backends.stop_check import Stopped
from logit_service.backends.torch_backend import ScoreItem, TorchBackend
from logit_service.errors import (
    DeadlineExceeded,
    InvalidRequest,
    LogitServiceError,
    ModelRejected,
    SnapshotCorrupt,
    VersionNotFound,
    VersionOutsideWindow,
)
from logit_service.server.forward_times import ForwardTimes
from logit_service.server.segment_results import SegmentResults
from logit_service.server.validation import validate_sequences, validate_vocabulary
from logit_service.snapshots.store import SnapshotStore
from logit_service.types import (
    EWMA_KEY,
    ScoreSequence,
    SequenceAnswer,
    SpanAnswer,
    SpotCheckReport,
    TokenSource,
    VersionRecord,
)

log = logging.getLogger(__name__)

# Errors after which a token may be answered from the EWMA when the request allows it.
_FALLBACK_ERRORS = (VersionNotFound, VersionOutsideWindow, DeadlineExceeded)


@dataclass
class ScoreOptions:
    temperature: float = 1.0
    allow_ewma_fallback: bool = False
    force_ewma: bool = False
    spot_check_fraction: float = 0.0
    deadline: float | None = None  # time.monotonic() value
    cancelled: threading.Event = field(default_factory=threading.Event)
    seed: int = 0


@dataclass
class _Job:
    """All positions of one sequence to score under one set of weights."""

    seq_index: int
    span_indices: list[int]
    positions: np.ndarray


@dataclass
class ScoreOutcome:
    answers: list[SequenceAnswer]
    spot_check: SpotCheckReport
    tokens_scored: int
    compute_seconds: float


class ScoringEngine:
    def __init__(
        self,
        store: SnapshotStore,
        backend: TorchBackend,
        *,
        max_sequences: int,
        max_tokens: int,
        kept: SegmentResults | None = None,
    ) -> None:
        self.store = store
        self.backend = backend
        self.kept = kept  # answers computed for submitted segments, reused by Score
        self.max_sequences = max_sequences
        self.max_tokens = max_tokens
        self._forward_times = ForwardTimes()  # for "can it finish before the deadline", before any work

    # --- public -----------------------------------------------------------------------------------

    def score(self, sequences: list[ScoreSequence], options: ScoreOptions) -> ScoreOutcome:
        started = time.perf_counter()
        validate_sequences(sequences, max_sequences=self.max_sequences, max_tokens=self.max_tokens)
        answers = [SequenceAnswer(sample_id=s.sample_id, spans=[None] * len(s.spans)) for s in sequences]  # type: ignore[list-item]
        kept = self._answer_from_kept(answers, sequences, options)
        plan, failures = self._plan(sequences, options, skip=kept)
        self._ensure_model(plan)
        validate_vocabulary(sequences, self.backend.vocab_size)

        ewma_jobs: list[tuple[int, int]] = list(failures)
        for record, jobs in self._ordered(plan, sequences):
            try:
                self._check_time(options, sum(int(j.positions.max()) + 1 for j in jobs))  # tokens forwarded
                values = self._run(record, sequences, jobs, options, key=str(record.policy_version))
            except (DeadlineExceeded, VersionOutsideWindow):  # out of time, or evicted since planned
                if not options.allow_ewma_fallback:
                    raise
                ewma_jobs.extend((j.seq_index, s) for j in jobs for s in j.span_indices)
                continue
            self._fill(answers, sequences, jobs, values, record, record.policy_version, TokenSource.EXACT)

        spot_check = SpotCheckReport()
        if ewma_jobs:
            spot_check = self._answer_from_ewma(answers, sequences, sorted(set(ewma_jobs)), options)
        tokens = sum(sp.span.length for a in answers for sp in a.spans)
        return ScoreOutcome(answers, spot_check, tokens, time.perf_counter() - started)

    # --- planning ---------------------------------------------------------------------------------

    def _answer_from_kept(
        self, answers: list[SequenceAnswer], sequences: list[ScoreSequence], options: ScoreOptions
    ) -> set[tuple[int, int]]:
        """Spans already scored for a submitted segment (exact, for the same tokens); returns them."""
        if self.kept is None or options.force_ewma or not len(self.kept):
            return set()
        done = set()
        for i, seq in enumerate(sequences):
            for j, span in enumerate(seq.spans):
                hit = self.kept.lookup(seq, span, options.temperature)
                if hit is not None:
                    logprobs, served_version, digest = hit
                    answers[i].spans[j] = SpanAnswer(span.policy_version, served_version, digest, span, TokenSource.EXACT, logprobs)
                    done.add((i, j))
        return done

    def _plan(
        self, sequences: list[ScoreSequence], options: ScoreOptions, skip: set[tuple[int, int]] = frozenset()
    ) -> tuple[dict[int, tuple[VersionRecord, dict[int, list[int]]]], dict[tuple[int, int], LogitServiceError]]:
        """version → (record, {sequence index → span indices}); spans that must go elsewhere."""
        plan: dict[int, tuple[VersionRecord, dict[int, list[int]]]] = {}
        failures: dict[tuple[int, int], LogitServiceError] = {}
        resolved: dict[int, VersionRecord | LogitServiceError] = {}
        for i, seq in enumerate(sequences):
            for j, span in enumerate(seq.spans):
                if (i, j) in skip:
                    continue
                if options.force_ewma:
                    failures[(i, j)] = VersionNotFound("the request asked for the EWMA route")
                    continue
                v = span.policy_version
                if v not in resolved:
                    try:
                        resolved[v] = self.store.resolve(v)
                    except _FALLBACK_ERRORS as e:
                        if not options.allow_ewma_fallback:
                            raise
                        resolved[v] = e
                outcome = resolved[v]
                if isinstance(outcome, LogitServiceError):
                    failures[(i, j)] = outcome
                    continue
                plan.setdefault(v, (outcome, defaultdict(list)))[1][i].append(j)
        return plan, failures

    def prepare_model(self, record: VersionRecord, key: str | None = None) -> None:
        """Builds the model from this version's config and weights and proves its log-prob path, if no
        model is built yet; otherwise checks the version's config is the one it was built from.

        The store calls this before registering a version (on the publishing thread), so the first
        publish fails, with ModelRejected, when its model cannot be served; the backend's lock keeps
        concurrent first publishes and Scores from building twice.
        """
        backend = self.backend
        if backend.model is not None:
            if backend.model_config_hash not in (None, record.model_config_hash):
                raise ModelRejected(
                    f"version {record.policy_version} has model config hash {record.model_config_hash[:12]}…, but "
                    f"this server's model was built from {backend.model_config_hash[:12]}…; one service serves one architecture"
                )
            return
        key = key or str(record.policy_version)
        config = self.store.load_config(record)
        weights = self.store.load(record, cache_key=key)
        try:
            backend.prepare(
                config, config_hash=record.model_config_hash, key=key, digest=record.digest, state_dict=weights.state_dict
            )
        except LogitServiceError:
            self.store.cache.drop(key)  # weights of a version that will not be registered
            raise

    def _ensure_model(self, plan: dict) -> None:
        """The model of a server restarted on a registry that already holds versions."""
        if self.backend.model is not None:
            return
        record = next((rec for rec, _ in plan.values()), None)
        key = None
        if record is None and (record := self.store.registry.get_ewma()) is not None:
            key = EWMA_KEY
        if record is None:
            retained = self.store.retained()
            if not retained:
                raise VersionNotFound("nothing is published yet, so no model can answer")
            record = retained[-1]
        self.prepare_model(record, key)

    def _ordered(self, plan: dict, sequences: list[ScoreSequence]) -> list[tuple[VersionRecord, list[_Job]]]:
        """Resident version first, then RAM-cached ones, then the rest: fewest swaps and disk reads."""
        cached = set(self.store.cache.keys())

        def rank(v: int) -> tuple[int, int]:
            if str(v) == self.backend.resident_key:
                return (0, v)
            return (1 if str(v) in cached else 2, v)

        out = []
        for v in sorted(plan, key=rank):
            record, by_seq = plan[v]
            keys = [(i, j) for i, spans in by_seq.items() for j in spans]
            out.append((record, self._jobs_for(sequences, keys)))
        return out

    # --- running ----------------------------------------------------------------------------------

    def _check_time(self, options: ScoreOptions, tokens: int) -> None:
        if options.cancelled.is_set():
            raise DeadlineExceeded("the request was cancelled")
        if options.deadline is None:
            return
        remaining = options.deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded("the deadline passed before scoring started")
        needed = self._forward_times.lower_bound_s(tokens)
        if needed > remaining:
            raise DeadlineExceeded(
                f"{tokens} tokens need at least {needed:.3f} s by the forwards measured here; "
                f"{remaining:.3f} s are left before the deadline"
            )

    def _run(self, record: VersionRecord, sequences: list[ScoreSequence], jobs: list[_Job], options: ScoreOptions, *, key: str) -> list[np.ndarray]:
        weights = self.store.load(record, cache_key=key)
        self.backend.load(key, record.digest, weights.state_dict)
        items = [ScoreItem(sequences[j.seq_index].token_ids[: int(j.positions.max()) + 1], j.positions) for j in jobs]

        def should_stop() -> bool:
            return options.cancelled.is_set() or (options.deadline is not None and time.monotonic() > options.deadline)

        started = time.perf_counter()
        try:
            values = self.backend.score(items, temperature=options.temperature, should_stop=should_stop)
        except Stopped:
            raise DeadlineExceeded("the deadline passed while scoring") from None
        elapsed = time.perf_counter() - started
        tokens = sum(len(it.token_ids) for it in items)
        self._forward_times.record(tokens, elapsed)
        return values

    def _fill(
        self,
        answers: list[SequenceAnswer],
        sequences: list[ScoreSequence],
        jobs: list[_Job],
        values: list[np.ndarray],
        record: VersionRecord,
        served_version: int,
        source: TokenSource,
    ) -> None:
        for job, job_values in zip(jobs, values):
            offset = 0
            for s in job.span_indices:
                span = sequences[job.seq_index].spans[s]
                answers[job.seq_index].spans[s] = SpanAnswer(
                    requested_version=span.policy_version,
                    served_version=served_version,
                    snapshot_digest=record.digest,
                    span=span,
                    source=source,
                    logprobs=np.asarray(job_values[offset : offset + span.length], dtype=np.float32),
                )
                offset += span.length

    # --- the approximate route --------------------------------------------------------------------

    def _answer_from_ewma(
        self, answers: list[SequenceAnswer], sequences: list[ScoreSequence], keys: list[tuple[int, int]], options: ScoreOptions
    ) -> SpotCheckReport:
        jobs = self._jobs_for(sequences, keys)
        record = self.store.ewma_record()
        if record is None:
            for i, j in keys:
                span = sequences[i].spans[j]
                answers[i].spans[j] = SpanAnswer(
                    span.policy_version, -1, "", span, TokenSource.UNAVAILABLE, np.full(span.length, np.nan, np.float32)
                )
            return SpotCheckReport()
        # The fallback is the last resort: it is not cut short by the deadline it is answering for.
        last_resort = ScoreOptions(temperature=options.temperature, cancelled=options.cancelled)
        try:
            values = self._run(record, sequences, jobs, last_resort, key=EWMA_KEY)
        except (InvalidRequest, SnapshotCorrupt):
            # A newer fold replaced the average between the lookup and the load: take the new one.
            record = self.store.ewma_record() or record
            values = self._run(record, sequences, jobs, last_resort, key=EWMA_KEY)
        served = record.policy_version  # the newest version the average folds in
        self._fill(answers, sequences, jobs, values, record, served, TokenSource.EWMA)
        if options.spot_check_fraction > 0:
            return self._spot_check(answers, sequences, keys, options)
        return SpotCheckReport()

    def _jobs_for(self, sequences: list[ScoreSequence], keys: list[tuple[int, int]]) -> list[_Job]:
        by_seq: dict[int, list[int]] = defaultdict(list)
        for i, j in keys:
            by_seq[i].append(j)
        return [
            _Job(i, spans, np.concatenate([np.arange(sequences[i].spans[s].start, sequences[i].spans[s].end) for s in spans]))
            for i, spans in sorted(by_seq.items())
        ]

    def _spot_check(
        self, answers: list[SequenceAnswer], sequences: list[ScoreSequence], keys: list[tuple[int, int]], options: ScoreOptions
    ) -> SpotCheckReport:
        """Scores a random sample of EWMA-answered tokens exactly, where their version is still kept."""
        rng = np.random.default_rng(options.seed)
        errors: list[np.ndarray] = []
        by_version: dict[int, list[tuple[int, int, np.ndarray]]] = defaultdict(list)
        for i, j in keys:
            span = sequences[i].spans[j]
            take = rng.random(span.length) < options.spot_check_fraction
            if take.any():
                by_version[span.policy_version].append((i, j, np.flatnonzero(take)))
        for v, picks in sorted(by_version.items()):
            try:
                record = self.store.resolve(v)
            except (VersionNotFound, VersionOutsideWindow):
                continue  # nothing exact left to compare against
            jobs = [_Job(i, [j], sequences[i].spans[j].start + idx) for i, j, idx in picks]
            values = self._run(record, sequences, jobs, ScoreOptions(temperature=options.temperature), key=str(v))
            for (i, j, idx), exact in zip(picks, values):
                errors.append(np.abs(answers[i].spans[j].logprobs[idx].astype(np.float64) - exact))
        if not errors:
            return SpotCheckReport()
        all_errors = np.concatenate(errors)
        return SpotCheckReport(len(all_errors), float(all_errors.max()), float(all_errors.mean()))

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
from logit_service.server.prefetch import Prefetcher
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
class _Request:
    """One caller's request through score_many: its answers so far, and its own error if it failed."""

    sequences: list[ScoreSequence]
    options: ScoreOptions
    started: float
    answers: list[SequenceAnswer] = field(default_factory=list)
    plan: dict = field(default_factory=dict)
    ewma_jobs: list[tuple[int, int]] = field(default_factory=list)
    spot_check: SpotCheckReport = field(default_factory=SpotCheckReport)
    error: LogitServiceError | None = None


def _stopped(options: ScoreOptions) -> bool:
    return options.cancelled.is_set() or (options.deadline is not None and time.monotonic() > options.deadline)


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
        prefetcher: Prefetcher | None = None,
    ) -> None:
        self.store = store
        self.prefetcher = prefetcher  # reads the next version while this one is scored
        self.backend = backend
        self.kept = kept  # answers computed for submitted segments, reused by Score
        self.max_sequences = max_sequences
        self.max_tokens = max_tokens
        self._forward_times = ForwardTimes()  # for "can it finish before the deadline", before any work

    # --- public -----------------------------------------------------------------------------------

    def score(self, sequences: list[ScoreSequence], options: ScoreOptions) -> ScoreOutcome:
        outcome = self.score_many([(sequences, options)])[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def score_many(
        self, calls: list[tuple[list[ScoreSequence], ScoreOptions]], upcoming: list[int] | None = None
    ) -> list[ScoreOutcome | LogitServiceError]:
        """Scores several callers' requests together: sequences that need the same version (and
        temperature) share forwards, which the backend keeps batch-invariant, so each answer is
        bit-identical to its request scored alone. Each request keeps its own deadline, cancellation,
        fallback and errors: one request's failure is its answer only. While one version is scored, the
        next one this batch needs (then the first of `upcoming`, versions of calls still queued) is read
        and verified on the prefetch thread."""
        requests = [self._prepare(sequences, options) for sequences, options in calls]
        live = [r for r in requests if r.error is None]
        if live:
            try:
                self._ensure_model([r.plan for r in live])
            except LogitServiceError as e:
                for r in live:
                    r.error = e
            for r in live:
                if r.error is None:
                    try:
                        validate_vocabulary(r.sequences, self.backend.vocab_size)
                    except LogitServiceError as e:
                        r.error = e
        groups = self._groups([r for r in requests if r.error is None])
        # The version scored last stays resident: a queued call that needs it needs no read.
        upcoming = [v for v in upcoming or [] if not groups or v != groups[-1][0].policy_version]
        for index, (record, temperature, members) in enumerate(groups):
            self._prefetch_after(groups[index + 1 :], upcoming)
            self._run_group(record, temperature, members)
        return [self._finish(r) for r in requests]

    # --- one request's phases ---------------------------------------------------------------------

    def _prepare(self, sequences: list[ScoreSequence], options: ScoreOptions) -> "_Request":
        request = _Request(sequences, options, time.perf_counter())
        try:
            validate_sequences(sequences, max_sequences=self.max_sequences, max_tokens=self.max_tokens)
            request.answers = [SequenceAnswer(sample_id=s.sample_id, spans=[None] * len(s.spans)) for s in sequences]  # type: ignore[list-item]
            kept = self._answer_from_kept(request.answers, sequences, options)
            request.plan, failures = self._plan(sequences, options, skip=kept)
            request.ewma_jobs = list(failures)
        except LogitServiceError as e:
            request.error = e
        return request

    def _give_up(self, request: "_Request", jobs: list[_Job], error: LogitServiceError) -> None:
        """Out of time, or evicted since planned: the EWMA answers where allowed, else the error does."""
        if request.options.allow_ewma_fallback:
            request.ewma_jobs.extend((j.seq_index, s) for j in jobs for s in j.span_indices)
        elif request.error is None:
            request.error = error

    def _finish(self, request: "_Request") -> ScoreOutcome | LogitServiceError:
        if request.error is None and request.ewma_jobs:
            try:
                request.spot_check = self._answer_from_ewma(
                    request.answers, request.sequences, sorted(set(request.ewma_jobs)), request.options
                )
            except LogitServiceError as e:
                request.error = e
        if request.error is not None:
            return request.error
        tokens = sum(sp.span.length for a in request.answers for sp in a.spans)
        return ScoreOutcome(request.answers, request.spot_check, tokens, time.perf_counter() - request.started)

    # --- shared forwards --------------------------------------------------------------------------

    def _groups(self, requests: list["_Request"]) -> list[tuple[VersionRecord, float, list[tuple["_Request", list[_Job]]]]]:
        """(version, temperature) → every request's jobs under it; resident version first, then
        RAM-cached ones, then the rest: fewest swaps and disk reads."""
        cached = set(self.store.cache.keys())

        def rank(key: tuple[int, float]) -> tuple[int, int, float]:
            v = key[0]
            if str(v) == self.backend.resident_key:
                return (0, v, key[1])
            return (1 if str(v) in cached else 2, v, key[1])

        grouped: dict[tuple[int, float], tuple[VersionRecord, list[tuple[_Request, list[_Job]]]]] = {}
        for request in requests:
            for v, (record, by_seq) in request.plan.items():
                keys = [(i, j) for i, spans in by_seq.items() for j in spans]
                entry = grouped.setdefault((v, request.options.temperature), (record, []))
                entry[1].append((request, self._jobs_for(request.sequences, keys)))
        return [(grouped[k][0], k[1], grouped[k][1]) for k in sorted(grouped, key=rank)]

    def _run_group(self, record: VersionRecord, temperature: float, members: list[tuple["_Request", list[_Job]]]) -> None:
        participants = []
        for request, jobs in members:
            if request.error is not None:
                continue
            try:
                self._check_time(request.options, sum(int(j.positions.max()) + 1 for j in jobs))  # tokens forwarded
            except DeadlineExceeded as e:
                self._give_up(request, jobs, e)
                continue
            participants.append((request, jobs))
        if not participants:
            return
        items = [self._item(request.sequences, job) for request, jobs in participants for job in jobs]

        def should_stop() -> bool:  # a shared forward stops only once none of its callers wants it
            return all(_stopped(request.options) for request, _ in participants)

        try:
            values = self._forward(record, items, temperature, should_stop, key=str(record.policy_version))
        except (DeadlineExceeded, VersionOutsideWindow) as e:
            for request, jobs in participants:
                self._give_up(request, jobs, e)
            return
        except LogitServiceError as e:
            if len(participants) == 1:
                participants[0][0].error = e
                return
            # One caller's tokens may be what failed (non-finite log-probs): each request again alone,
            # which gives the others the very same answers (the forwards are batch-invariant).
            for member in participants:
                self._run_group(record, temperature, [member])
            return
        offset = 0
        for request, jobs in participants:
            self._fill(request.answers, request.sequences, jobs, values[offset : offset + len(jobs)], record,
                       record.policy_version, TokenSource.EXACT)  # fmt: skip
            offset += len(jobs)

    def _prefetch_after(self, later: list, upcoming: list[int]) -> None:
        if self.prefetcher is None:
            return
        if later:
            record = later[0][0]
            self.prefetcher.start(record, str(record.policy_version))
        elif upcoming:
            self.prefetcher.start_version(upcoming[0])

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

    def _ensure_model(self, plans: list[dict]) -> None:
        """The model of a server restarted on a registry that already holds versions."""
        if self.backend.model is not None:
            return
        record = next((rec for plan in plans for rec, _ in plan.values()), None)
        key = None
        if record is None and (record := self.store.registry.get_ewma()) is not None:
            key = EWMA_KEY
        if record is None:
            retained = self.store.retained()
            if not retained:
                raise VersionNotFound("nothing is published yet, so no model can answer")
            record = retained[-1]
        self.prepare_model(record, key)

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
        items = [self._item(sequences, j) for j in jobs]
        return self._forward(record, items, options.temperature, lambda: _stopped(options), key=key)

    @staticmethod
    def _item(sequences: list[ScoreSequence], job: _Job) -> ScoreItem:
        return ScoreItem(sequences[job.seq_index].token_ids[: int(job.positions.max()) + 1], job.positions)

    def _forward(self, record: VersionRecord, items: list[ScoreItem], temperature: float, should_stop, *, key: str) -> list[np.ndarray]:
        if (self.backend.resident_key, self.backend.resident_digest) != (key, record.digest):
            # Not resident: the read-ahead copy if the prefetch thread has it, else a load here.
            weights = self.prefetcher.take(record, key) if self.prefetcher is not None else None
            if weights is None:
                weights = self.store.load(record, cache_key=key)
            self.backend.load(key, record.digest, weights.state_dict)
        started = time.perf_counter()
        try:
            values = self.backend.score(items, temperature=temperature, should_stop=should_stop)
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

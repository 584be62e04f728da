"""Protobuf ↔ domain conversion. Nothing else in the server touches wire types' byte layouts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from logit_service.errors import InvalidRequest, RequestTooLarge
from logit_service.server.validation import MAX_SAMPLE_ID_BYTES, check_name
from logit_service.types import ScoreSequence, SequenceAnswer, Span, SpotCheckReport, VersionRecord, VersionState
from logit_service.v1 import logit_service_pb2 as pb

_STATE = {VersionState.RETAINED: pb.VERSION_STATE_RETAINED, VersionState.EVICTED: pb.VERSION_STATE_EVICTED}


def sequences_from_proto(
    sequences: Sequence[pb.Sequence], *, max_sequences: int, max_tokens: int
) -> list[ScoreSequence]:
    """Domain sequences, after the checks that bound the conversion itself (counts and bytes): a
    request near the message limit is refused before any per-token work."""
    if len(sequences) > max_sequences:
        raise RequestTooLarge(
            f"{len(sequences)} sequences exceed the limit of {max_sequences} per request",
            limit="max_sequences_per_request", limit_value=max_sequences, value=len(sequences),
        )
    total_tokens = sum(len(seq.token_ids) for seq in sequences) // 4
    if total_tokens > max_tokens:
        raise RequestTooLarge(
            f"{total_tokens} tokens exceed the limit of {max_tokens} per request",
            limit="max_tokens_per_request", limit_value=max_tokens, value=total_tokens,
        )
    out = []
    for i, seq in enumerate(sequences):
        check_name(seq.sample_id, f"sequence {i}: sample_id", max_bytes=MAX_SAMPLE_ID_BYTES)
        # Spans cannot overlap and each scores at least one position: more spans than tokens is malformed.
        if len(seq.spans) > max(len(seq.token_ids) // 4, 1):
            raise InvalidRequest(f"sequence {i} has {len(seq.spans)} spans but only {len(seq.token_ids) // 4} tokens")
        if len(seq.token_ids) % 4:
            raise InvalidRequest(f"sequence {i}: token_ids holds {len(seq.token_ids)} bytes, not a multiple of 4 (int32)")
        token_ids = np.frombuffer(seq.token_ids, dtype="<i4").astype(np.int64)
        spans = tuple(Span(int(s.policy_version), int(s.start), int(s.end)) for s in seq.spans)
        out.append(ScoreSequence(sample_id=seq.sample_id, token_ids=token_ids, spans=spans))
    return out


def answers_to_proto(answers: list[SequenceAnswer]) -> list[pb.SequenceResult]:
    results = []
    for answer in answers:
        logprobs = np.concatenate([s.logprobs for s in answer.spans]).astype("<f4")
        sources = np.concatenate([np.full(s.span.length, int(s.source), np.uint8) for s in answer.spans])
        results.append(
            pb.SequenceResult(
                sample_id=answer.sample_id,
                logprobs=logprobs.tobytes(),
                sources=sources.tobytes(),
                spans=[
                    pb.SpanResult(
                        requested_version=s.requested_version,
                        served_version=s.served_version,
                        snapshot_digest=s.snapshot_digest,
                        start=s.span.start,
                        end=s.span.end,
                        source=int(s.source),
                    )
                    for s in answer.spans
                ],
            )
        )
    return results


def spot_check_to_proto(report: SpotCheckReport) -> pb.SpotCheck:
    return pb.SpotCheck(
        tokens_checked=report.tokens_checked, max_abs_error=report.max_abs_error, mean_abs_error=report.mean_abs_error
    )


def version_to_proto(record: VersionRecord, *, resident: bool) -> pb.VersionInfo:
    return pb.VersionInfo(
        policy_version=record.policy_version,
        snapshot_path=record.snapshot_path,
        digest=record.digest,
        model_config_hash=record.model_config_hash,
        dtype=record.dtype,
        created_at=record.created_at,
        state=_STATE[record.state],
        resident=resident,
        covers_versions=list(record.covers_versions),
    )

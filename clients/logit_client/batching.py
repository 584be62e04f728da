"""Splitting one large scoring batch into several calls, and joining their answers back in order.

Large unary gRPC messages are slow and erratic in Python, and a server refuses requests over its
token limit; several calls of bounded size also spread a batch over replicas.
"""

from __future__ import annotations

from collections.abc import Sequence

from logit_common.types import SpotCheckReport

from .requests import ScoreResult, SequenceInput, as_int_array

DEFAULT_CALL_TOKENS = 262_144
"""Tokens per call (about 1 MB of token ids): far below server limits, large enough to batch well."""


def split_batch(sequences: Sequence[SequenceInput], max_call_tokens: int) -> list[list[SequenceInput]]:
    """Consecutive groups of at most `max_call_tokens` tokens (a longer sequence goes alone)."""
    if max_call_tokens < 1:
        raise ValueError(f"max_call_tokens must be >= 1, got {max_call_tokens}")
    groups: list[list[SequenceInput]] = []
    current: list[SequenceInput] = []
    tokens = 0
    for seq in sequences:
        n = len(as_int_array(seq.token_ids, "token_ids"))
        if current and tokens + n > max_call_tokens:
            groups.append(current)
            current, tokens = [], 0
        current.append(seq)
        tokens += n
    if current:
        groups.append(current)
    return groups


def join_results(results: Sequence[ScoreResult]) -> ScoreResult:
    """One ScoreResult from the answers of consecutive groups, in request order."""
    if len(results) == 1:
        return results[0]
    checked = sum(r.spot_check.tokens_checked for r in results)
    mean = sum(r.spot_check.mean_abs_error * r.spot_check.tokens_checked for r in results) / checked if checked else 0.0
    return ScoreResult(
        sequences=[s for r in results for s in r.sequences],
        tokens_scored=sum(r.tokens_scored for r in results),
        backend=results[0].backend,
        dtype=results[0].dtype,
        spot_check=SpotCheckReport(checked, max((r.spot_check.max_abs_error for r in results), default=0.0), mean),
        compute_seconds=sum(r.compute_seconds for r in results),
        # Calls may land on replicas of different backends: the weakest claim holds for the whole.
        numerics="inference" if any(r.numerics == "inference" for r in results) else results[0].numerics,
    )

"""Checks a request before any model work: shapes, spans, limits, names. Raises, never repairs."""

from __future__ import annotations

import math

from logit_service.errors import InvalidRequest, RequestTooLarge
from logit_service.snapshots.manifest import MAX_POLICY_VERSION
from logit_service.types import MAX_TEMPERATURE, MIN_TEMPERATURE, ScoreSequence

MAX_SAMPLE_ID_BYTES = 1024
"""A sample id is echoed back and keys kept answers: bounded, so neither grows without limit."""
MAX_REQUEST_ID_BYTES = 256
MAX_HOLDER_BYTES = 256
"""A lease holder's name is stored in the registry with every lease it takes."""
MAX_VERSIONS_PER_CALL = 1024
"""Versions one LeaseVersions call may name (each is a registry write)."""


def check_name(value: str, field: str, *, max_bytes: int, required: bool = False) -> None:
    """A free-form name from the wire: bounded in bytes, no NUL or other control characters."""
    if required and not value:
        raise InvalidRequest(f"{field} is empty")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise InvalidRequest(f"{field} is {size} bytes long; the limit is {max_bytes}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise InvalidRequest(f"{field} contains a NUL or other control character")


def check_policy_version(value: int, field: str = "policy_version") -> None:
    if not 0 <= value <= MAX_POLICY_VERSION:
        raise InvalidRequest(f"{field} must be >= 0, got {value}")


def validate_sequences(sequences: list[ScoreSequence], *, max_sequences: int, max_tokens: int) -> int:
    """Returns the number of scored positions."""
    if not sequences:
        raise InvalidRequest("the request holds no sequences")
    if len(sequences) > max_sequences:
        raise RequestTooLarge(
            f"{len(sequences)} sequences exceed the limit of {max_sequences} per request",
            limit="max_sequences_per_request", limit_value=max_sequences, value=len(sequences),
        )
    total_tokens = sum(len(s.token_ids) for s in sequences)
    if total_tokens > max_tokens:
        raise RequestTooLarge(
            f"{total_tokens} tokens exceed the limit of {max_tokens} per request",
            limit="max_tokens_per_request", limit_value=max_tokens, value=total_tokens,
        )
    scored = 0
    for i, seq in enumerate(sequences):
        name = f"sequence {i}" + (f" ({seq.sample_id!r})" if seq.sample_id else "")
        n = len(seq.token_ids)
        if n < 2:
            raise InvalidRequest(f"{name} has {n} tokens; at least 2 are needed to score one")
        if not seq.spans:
            raise InvalidRequest(f"{name} has no spans to score")
        if int(seq.token_ids.min()) < 0:
            raise InvalidRequest(f"{name} holds a negative token id {int(seq.token_ids.min())}")
        previous_end = 0
        for span in sorted(seq.spans, key=lambda s: s.start):
            if span.policy_version < 0:
                raise InvalidRequest(f"{name}: policy_version must be >= 0, got {span.policy_version}")
            if not 1 <= span.start < span.end <= n:
                raise InvalidRequest(
                    f"{name}: span [{span.start}, {span.end}) is out of range; spans need 1 <= start < end <= {n}"
                )
            if span.start < previous_end:
                raise InvalidRequest(f"{name}: span [{span.start}, {span.end}) overlaps another span ending at {previous_end}")
            previous_end = span.end
            scored += span.length
    return scored


def validate_vocabulary(sequences: list[ScoreSequence], vocab_size: int) -> None:
    for i, seq in enumerate(sequences):
        top = int(seq.token_ids.max())
        if top >= vocab_size:
            raise InvalidRequest(f"sequence {i}: token id {top} is outside the vocabulary (size {vocab_size})")


def validate_temperature(value: float) -> float:
    """The temperature of a request; the proto3 default 0 means "as sampled at 1.0"."""
    temperature = value or 1.0
    if not (math.isfinite(temperature) and MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE):
        raise InvalidRequest(
            f"temperature must lie in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}] (0 means 1.0), got {value:g}"
        )
    return temperature

"""Request checks before any model work: every malformed shape is refused with a message naming it."""

from __future__ import annotations

import numpy as np
import pytest

from logit_service.errors import InvalidRequest, RequestTooLarge
from logit_service.server.validation import (
    check_name,
    check_policy_version,
    validate_sequences,
    validate_temperature,
    validate_vocabulary,
)
from logit_service.types import ScoreSequence, Span

MAX_SEQUENCES = 4
MAX_TOKENS = 64


def _seq(token_ids, *spans: tuple[int, int, int], sample_id: str = "s") -> ScoreSequence:
    """spans as (policy_version, start, end)."""
    return ScoreSequence(
        sample_id=sample_id,
        token_ids=np.asarray(token_ids, dtype=np.int64),
        spans=tuple(Span(policy_version=v, start=a, end=b) for v, a, b in spans),
    )


def _validate(sequences: list[ScoreSequence]) -> int:
    return validate_sequences(sequences, max_sequences=MAX_SEQUENCES, max_tokens=MAX_TOKENS)


@pytest.mark.parametrize(
    ("sequences", "message"),
    [
        pytest.param([], "^the request holds no sequences$", id="empty request"),
        pytest.param([_seq([5], (0, 1, 1))], "has 1 tokens; at least 2", id="one token"),
        pytest.param([_seq([5], (0, 1, 1), sample_id="")], "^sequence 0 has 1 tokens", id="an unnamed sequence is named by its index"),
        pytest.param([_seq([], (0, 1, 1))], "has 0 tokens; at least 2", id="no tokens"),
        pytest.param([_seq([1, 2, 3])], "no spans", id="no spans"),
        pytest.param([_seq([1, 2, 3], (0, 0, 2))], r"span \[0, 2\) is out of range", id="span starts at 0"),
        pytest.param([_seq([1, 2, 3], (0, 1, 4))], r"span \[1, 4\) is out of range.*<= 3", id="span ends past the end"),
        pytest.param([_seq([1, 2, 3], (0, 2, 2))], r"span \[2, 2\) is out of range", id="empty span"),
        pytest.param([_seq([1, 2, 3], (0, 2, 1))], r"span \[2, 1\) is out of range", id="start after end"),
        pytest.param([_seq([1, 2, 3], (0, -1, 2))], r"span \[-1, 2\) is out of range", id="negative start"),
        pytest.param(
            [_seq([1, 2, 3, 4, 5], (0, 1, 3), (1, 2, 5))],
            r"span \[2, 5\) overlaps another span ending at 3",
            id="overlap",
        ),
        pytest.param(
            [_seq([1, 2, 3, 4, 5], (1, 2, 5), (0, 1, 3))],
            r"span \[2, 5\) overlaps",
            id="overlap listed out of order",
        ),
        pytest.param([_seq([1, 2, 3, 4], (0, 1, 3), (1, 1, 3))], "overlaps", id="same span twice"),
        pytest.param([_seq([1, 2, 3], (-1, 1, 3))], "policy_version must be >= 0, got -1", id="negative version"),
        pytest.param([_seq([1, -7, 3], (0, 1, 3))], "negative token id -7", id="negative token id"),
        pytest.param(
            [_seq([1, 2, 3], (0, 1, 3), sample_id="ok"), _seq([1, 2, 3], (0, 0, 3), sample_id="bad")],
            r"sequence 1 \('bad'\)",
            id="message names the offending sequence",
        ),
    ],
)
def test_malformed_request_is_invalid(sequences, message):
    with pytest.raises(InvalidRequest, match=message):
        _validate(sequences)


@pytest.mark.parametrize(
    ("sequences", "message"),
    [
        pytest.param(
            [_seq([1, 2], (0, 1, 2))] * (MAX_SEQUENCES + 1),
            f"{MAX_SEQUENCES + 1} sequences exceed the limit of {MAX_SEQUENCES}",
            id="too many sequences",
        ),
        pytest.param(
            [_seq(np.ones(MAX_TOKENS // 2 + 1), (0, 1, 2))] * 2,
            f"{MAX_TOKENS + 2} tokens exceed the limit of {MAX_TOKENS}",
            id="too many tokens",
        ),
    ],
)
def test_oversized_request_is_too_large(sequences, message):
    with pytest.raises(RequestTooLarge, match=message):
        _validate(sequences)


@pytest.mark.parametrize(
    ("sequences", "scored"),
    [
        pytest.param([_seq([1, 2], (0, 1, 2))], 1, id="smallest request"),
        pytest.param([_seq([1, 2, 3, 4, 5], (0, 1, 3), (1, 3, 5))], 4, id="adjacent spans"),
        pytest.param([_seq([1, 2, 3, 4, 5], (1, 3, 5), (0, 1, 2))], 3, id="spans out of order with a gap"),
        pytest.param([_seq([1, 2, 3], (0, 2, 3)), _seq(np.arange(10), (3, 1, 10))], 1 + 9, id="several sequences"),
        pytest.param([_seq([1, 2], (0, 1, 2))] * MAX_SEQUENCES, MAX_SEQUENCES, id="exactly the sequence limit"),
        pytest.param([_seq(np.ones(MAX_TOKENS), (0, 1, MAX_TOKENS))], MAX_TOKENS - 1, id="exactly the token limit"),
    ],
)
def test_valid_request_returns_the_number_of_scored_positions(sequences, scored):
    assert _validate(sequences) == scored


def test_vocabulary_accepts_the_last_id_and_rejects_vocab_size():
    vocab_size = 256
    validate_vocabulary([_seq([0, vocab_size - 1], (0, 1, 2))], vocab_size)

    with pytest.raises(InvalidRequest, match=r"sequence 1: token id 256 is outside the vocabulary \(size 256\)"):
        validate_vocabulary([_seq([0, 1], (0, 1, 2)), _seq([3, vocab_size, 4], (0, 1, 3))], vocab_size)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("", "^holder is empty$", id="empty when required"),
        pytest.param("x" * 9, "^holder is 9 bytes long; the limit is 8$", id="over the byte bound"),
        pytest.param("é" * 5, "^holder is 10 bytes long", id="bytes, not characters"),
        pytest.param("a\x00b", "NUL or other control character", id="NUL"),
        pytest.param("a\x1fb", "control character", id="unit separator"),
        pytest.param("a\x7fb", "control character", id="DEL"),
    ],
)
def test_names_from_the_wire_are_bounded_and_printable(value, message):
    with pytest.raises(InvalidRequest, match=message):
        check_name(value, "holder", max_bytes=8, required=True)


@pytest.mark.parametrize("value", ["", "x" * 8, "é" * 4, "a b~", "\x20"])
def test_names_within_the_bounds_pass(value):
    check_name(value, "holder", max_bytes=8)  # not required: empty passes too


@pytest.mark.parametrize("value", [0, 1, 2**63 - 1])
def test_policy_versions_from_zero_to_int64_max_pass(value):
    check_policy_version(value)


@pytest.mark.parametrize("value", [-1, 2**63])
def test_policy_versions_outside_int64_from_zero_are_invalid(value):
    with pytest.raises(InvalidRequest, match=f"^since_version must be >= 0, got {value}$"):
        check_policy_version(value, "since_version")


@pytest.mark.parametrize(("value", "expected"), [(0.0, 1.0), (1e-3, 1e-3), (0.7, 0.7), (1e3, 1e3)])
def test_temperatures_in_bounds_are_kept_and_zero_means_one(value, expected):
    assert validate_temperature(value) == expected


@pytest.mark.parametrize("value", [9.9e-4, 1000.5, -1.0, float("nan"), float("inf"), 1e-45])
def test_temperatures_outside_the_bounds_are_invalid(value):
    with pytest.raises(InvalidRequest, match=r"^temperature must lie in \[0.001, 1000\] \(0 means 1.0\), got "):
        validate_temperature(value)


def test_a_policy_version_error_names_the_field_policy_version_by_default():
    with pytest.raises(InvalidRequest, match="^policy_version must be >= 0, got -1$"):
        check_policy_version(-1)

"""The pre-decode bounds of logit_service.server.wire_bounds on real serialized requests: each byte, count
and length limit at its edge and one past it, the error each raises with its fields, and the refusal of
bytes that are no protobuf message at all."""

from __future__ import annotations

import numpy as np
import pytest

from logit_service.errors import InvalidRequest, RequestTooLarge
from logit_service.server.validation import MAX_SAMPLE_ID_BYTES
from logit_service.server.wire_bounds import MAX_METADATA_REQUEST_BYTES, RequestBounds
from logit_service.v1 import logit_service_pb2 as pb

PREFIX = "/logit_service.v1.LogitService/"
SCORE = PREFIX + "Score"
SUBMIT = PREFIX + "SubmitSegments"
BOUNDS = RequestBounds(max_request_bytes=1000, max_sequences=2, max_tokens=6)


def _sequence(tokens: int, spans: int = 1, sample_id: str = "s") -> pb.Sequence:
    return pb.Sequence(
        sample_id=sample_id,
        token_ids=np.arange(tokens, dtype="<i4").tobytes(),
        spans=[pb.VersionSpan(policy_version=0, start=1 + i, end=2 + i) for i in range(spans)],
    )


def _score(*sequences: pb.Sequence) -> bytes:
    return pb.ScoreRequest(sequences=sequences, temperature=0.5, allow_ewma_fallback=True).SerializeToString()


def test_sequence_methods_get_the_request_limit_and_the_others_the_metadata_limit():
    assert MAX_METADATA_REQUEST_BYTES == 64 << 10
    assert BOUNDS.byte_limit(SCORE) == BOUNDS.byte_limit(SUBMIT) == 1000
    assert BOUNDS.byte_limit(PREFIX + "ListVersions") == MAX_METADATA_REQUEST_BYTES
    assert BOUNDS.byte_limit(PREFIX + "PublishVersion") == MAX_METADATA_REQUEST_BYTES


def test_a_request_of_exactly_the_byte_limit_passes_and_one_byte_more_is_refused():
    BOUNDS.check_size(SCORE, b"\0" * 1000)
    with pytest.raises(RequestTooLarge, match="^1001 bytes exceed the limit of 1000 bytes per Score request$") as caught:
        BOUNDS.check_size(SCORE, b"\0" * 1001)
    assert caught.value.metadata == {"limit": "max_request_bytes", "limit_value": "1000", "value": "1001"}


def test_a_metadata_request_names_its_own_limit():
    BOUNDS.check_size(PREFIX + "Barrier", b"\0" * MAX_METADATA_REQUEST_BYTES)
    with pytest.raises(RequestTooLarge, match="per Barrier request$") as caught:
        BOUNDS.check_size(PREFIX + "Barrier", b"\0" * (MAX_METADATA_REQUEST_BYTES + 1))
    assert caught.value.metadata["limit"] == "max_metadata_request_bytes"


def test_methods_without_sequences_are_not_walked():
    BOUNDS.check_counts(PREFIX + "ListVersions", b"\xff\xff\xff")  # not a message, and not looked at


@pytest.mark.parametrize("method", [SCORE, SUBMIT])
def test_sequences_up_to_the_limit_pass_and_one_more_is_refused(method):
    BOUNDS.check_counts(method, _score(_sequence(2), _sequence(2)))
    with pytest.raises(RequestTooLarge, match="^at least 3 sequences exceed the limit of 2 per request$") as caught:
        BOUNDS.check_counts(method, _score(_sequence(2), _sequence(2), _sequence(2)))
    assert caught.value.metadata == {"limit": "max_sequences_per_request", "limit_value": "2", "value": "3"}


def test_tokens_are_counted_over_all_sequences_up_to_the_limit():
    BOUNDS.check_counts(SCORE, _score(_sequence(4), _sequence(2)))
    with pytest.raises(RequestTooLarge, match="^at least 7 tokens exceed the limit of 6 per request$") as caught:
        BOUNDS.check_counts(SCORE, _score(_sequence(4), _sequence(3)))
    assert caught.value.metadata == {"limit": "max_tokens_per_request", "limit_value": "6", "value": "7"}


def test_spans_up_to_the_token_limit_pass_and_one_more_is_refused():
    BOUNDS.check_counts(SCORE, _score(_sequence(1, spans=6)))
    with pytest.raises(InvalidRequest, match="^the request holds more than 6 spans, more than its token limit$"):
        BOUNDS.check_counts(SCORE, _score(_sequence(1, spans=4), _sequence(1, spans=3)))


def test_a_sample_id_of_the_limit_passes_and_a_longer_one_is_refused():
    BOUNDS.check_counts(SCORE, _score(_sequence(1), _sequence(1, sample_id="x" * MAX_SAMPLE_ID_BYTES)))
    too_long = "x" * (MAX_SAMPLE_ID_BYTES + 1)
    with pytest.raises(InvalidRequest, match=f"^sequence 1: sample_id is {MAX_SAMPLE_ID_BYTES + 1} bytes long; "):
        BOUNDS.check_counts(SCORE, _score(_sequence(1), _sequence(1, sample_id=too_long)))


def test_fields_other_than_sequences_are_skipped_whatever_their_wire_type():
    # field 7 as a varint, field 8 fixed64, field 9 fixed32, field 1 as a varint: none is a sequence
    unknown = b"\x38\x96\x01" + b"\x41" + b"\0" * 8 + b"\x4d" + b"\0" * 4 + b"\x08\x05"
    inner_unknown = pb.Sequence(sample_id="s").SerializeToString() + b"\x20\x07"  # a varint inside a Sequence
    sequence_field = b"\x0a" + bytes([len(inner_unknown)]) + inner_unknown
    one = RequestBounds(max_request_bytes=1000, max_sequences=1, max_tokens=1)
    one.check_counts(SCORE, unknown + sequence_field + _score())


def test_a_ten_byte_varint_is_read_and_an_eleventh_byte_is_refused():
    longest = b"\x38" + b"\xff" * 9 + b"\x01"  # field 7 holding 2**64 - 1
    BOUNDS.check_counts(SCORE, longest)
    with pytest.raises(InvalidRequest, match="truncated or overlong varint"):
        BOUNDS.check_counts(SCORE, b"\x38" + b"\xff" * 10 + b"\x01")


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        pytest.param(b"\x38", "truncated or overlong varint", id="varint cut short"),
        pytest.param(b"\x38\x80", "truncated or overlong varint", id="varint continues past the end"),
        pytest.param(b"\x00\x01", "field number 0", id="field number 0"),
        pytest.param(b"\x0b", "wire type 3 of field 1", id="group start"),
        pytest.param(b"\x0a\x05abc", "field 1 runs past the end of its message", id="length past the end"),
        pytest.param(b"\x41\0\0\0", "field 8 runs past the end", id="fixed64 cut short"),
        pytest.param(b"\x4d\0\0", "field 9 runs past the end", id="fixed32 cut short"),
        pytest.param(b"\x0a\x02\x0a\x05", "field 1 runs past the end", id="inside a sequence"),
    ],
)
def test_bytes_that_are_no_message_are_an_invalid_request(raw, why):
    with pytest.raises(InvalidRequest, match=f"^the request bytes do not decode as a Score request: {why}"):
        BOUNDS.check_counts(SCORE, raw)


def test_a_valid_request_walks_to_its_end_on_every_field():
    request = _score(_sequence(3, spans=2, sample_id="a"), _sequence(3, spans=1, sample_id="b"))
    assert pb.ScoreRequest.FromString(request).sequences[1].sample_id == "b"
    BOUNDS.check_counts(SCORE, request)

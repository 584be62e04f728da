"""The protobuf <-> domain conversion of logit_service.server.convert on real messages: the count and
token limits at their edge and one past it with the fields the error carries, the checks made before any
per-token work, and the bytes of every answer field as the client reads them."""

from __future__ import annotations

import numpy as np
import pytest

from logit_service.errors import InvalidRequest, RequestTooLarge
from logit_service.server.convert import answers_to_proto, sequences_from_proto, spot_check_to_proto, version_to_proto
from logit_service.server.validation import MAX_SAMPLE_ID_BYTES
from logit_service.types import (
    SequenceAnswer, Span, SpanAnswer, SpotCheckReport, TokenSource, VersionRecord, VersionState,
)  # fmt: skip
from logit_service.v1 import logit_service_pb2 as pb


def _sequence(tokens, spans=((0, 1, 2),), sample_id="s") -> pb.Sequence:
    return pb.Sequence(
        sample_id=sample_id,
        token_ids=np.asarray(tokens, dtype="<i4").tobytes(),
        spans=[pb.VersionSpan(policy_version=v, start=a, end=b) for v, a, b in spans],
    )


def test_a_sequence_becomes_int64_tokens_and_spans_as_sent():
    wire = _sequence([5, -1, 2**31 - 1, 7], spans=((3, 1, 2), (9, 2, 4)), sample_id="rollout-1")
    [seq] = sequences_from_proto([wire], max_sequences=1, max_tokens=4)
    assert seq.sample_id == "rollout-1"
    assert seq.token_ids.dtype == np.int64
    assert seq.token_ids.tolist() == [5, -1, 2**31 - 1, 7]
    assert seq.spans == (Span(3, 1, 2), Span(9, 2, 4))
    assert all(type(x) is int for s in seq.spans for x in (s.policy_version, s.start, s.end))


def test_token_ids_are_read_little_endian_whatever_the_host():
    wire = pb.Sequence(sample_id="s", token_ids=bytes([1, 0, 0, 0, 0, 1, 0, 0]), spans=[pb.VersionSpan(start=1, end=2)])
    [seq] = sequences_from_proto([wire], max_sequences=1, max_tokens=2)
    assert seq.token_ids.tolist() == [1, 256]


def test_sequences_up_to_the_limit_pass_and_one_more_is_refused_with_its_fields():
    two = [_sequence([1, 2]), _sequence([3, 4])]
    assert len(sequences_from_proto(two, max_sequences=2, max_tokens=100)) == 2
    with pytest.raises(RequestTooLarge, match="^3 sequences exceed the limit of 2 per request$") as caught:
        sequences_from_proto([*two, _sequence([5, 6])], max_sequences=2, max_tokens=100)
    assert caught.value.metadata == {"limit": "max_sequences_per_request", "limit_value": "2", "value": "3"}


def test_tokens_up_to_the_limit_pass_and_one_more_is_refused_with_its_fields():
    sequences_from_proto([_sequence([1, 2, 3]), _sequence([4, 5])], max_sequences=2, max_tokens=5)
    with pytest.raises(RequestTooLarge, match="^6 tokens exceed the limit of 5 per request$") as caught:
        sequences_from_proto([_sequence([1, 2, 3]), _sequence([4, 5, 6])], max_sequences=2, max_tokens=5)
    assert caught.value.metadata == {"limit": "max_tokens_per_request", "limit_value": "5", "value": "6"}


def test_the_limits_are_checked_before_any_sequence_is_looked_at():
    bad = pb.Sequence(sample_id="\0", token_ids=b"\1\2\3")  # malformed in every other way
    with pytest.raises(RequestTooLarge, match="sequences exceed"):
        sequences_from_proto([bad, bad], max_sequences=1, max_tokens=100)


def test_a_sample_id_is_checked_and_the_error_names_its_sequence():
    sequences_from_proto([_sequence([1, 2], sample_id="x" * MAX_SAMPLE_ID_BYTES)], max_sequences=1, max_tokens=2)
    with pytest.raises(InvalidRequest, match=f"^sequence 1: sample_id is {MAX_SAMPLE_ID_BYTES + 1} bytes long"):
        sequences_from_proto(
            [_sequence([1, 2]), _sequence([1, 2], sample_id="x" * (MAX_SAMPLE_ID_BYTES + 1))], max_sequences=2, max_tokens=4
        )
    with pytest.raises(InvalidRequest, match="^sequence 0: sample_id contains a NUL"):
        sequences_from_proto([_sequence([1, 2], sample_id="a\0")], max_sequences=1, max_tokens=2)


def test_as_many_spans_as_tokens_pass_and_one_more_is_refused():
    four = ((0, 0, 1), (0, 1, 2), (0, 2, 3), (0, 3, 4))
    [seq] = sequences_from_proto([_sequence([1, 2, 3, 4], spans=four)], max_sequences=1, max_tokens=4)
    assert len(seq.spans) == 4
    with pytest.raises(InvalidRequest, match="^sequence 0 has 5 spans but only 4 tokens$"):
        sequences_from_proto([_sequence([1, 2, 3, 4], spans=(*four, (0, 4, 5)))], max_sequences=1, max_tokens=4)


def test_a_sequence_without_tokens_may_carry_one_span_for_validation_to_refuse():
    # The span count bound is at least one, so the empty sequence reaches the checks that name what is wrong.
    [seq] = sequences_from_proto([_sequence([], spans=((0, 0, 1),))], max_sequences=1, max_tokens=4)
    assert seq.token_ids.size == 0 and seq.spans == (Span(0, 0, 1),)
    with pytest.raises(InvalidRequest, match="^sequence 0 has 2 spans but only 0 tokens$"):
        sequences_from_proto([_sequence([], spans=((0, 0, 1), (0, 1, 2)))], max_sequences=1, max_tokens=4)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7])
def test_token_bytes_that_are_not_whole_int32s_are_refused(size):
    wire = pb.Sequence(sample_id="s", token_ids=b"\1" * size, spans=[pb.VersionSpan(start=0, end=1)])
    with pytest.raises(InvalidRequest, match=f"^sequence 0: token_ids holds {size} bytes, not a multiple of 4 \\(int32\\)$"):
        sequences_from_proto([wire], max_sequences=1, max_tokens=100)


def _span(version, start, end, source, values, digest="d") -> SpanAnswer:
    return SpanAnswer(
        requested_version=version, served_version=version + 1, snapshot_digest=digest, span=Span(version, start, end),
        source=source, logprobs=np.asarray(values, dtype=np.float64),
    )  # fmt: skip


def test_answers_carry_little_endian_float32_logprobs_and_one_source_byte_per_position():
    answer = SequenceAnswer(
        sample_id="a",
        spans=[_span(2, 1, 3, TokenSource.EXACT, [-0.5, -1.25], "sha-2"), _span(4, 3, 4, TokenSource.EWMA, [-3.0], "sha-4")],
    )
    [result] = answers_to_proto([answer])
    assert result.sample_id == "a"
    assert result.logprobs == np.asarray([-0.5, -1.25, -3.0], dtype="<f4").tobytes()
    assert result.sources == bytes([TokenSource.EXACT, TokenSource.EXACT, TokenSource.EWMA])
    assert [
        (s.requested_version, s.served_version, s.snapshot_digest, s.start, s.end, s.source) for s in result.spans
    ] == [(2, 3, "sha-2", 1, 3, pb.TOKEN_SOURCE_EXACT), (4, 5, "sha-4", 3, 4, pb.TOKEN_SOURCE_EWMA)]


def test_every_answer_gets_its_own_result_in_order():
    answers = [
        SequenceAnswer(sample_id=name, spans=[_span(0, 0, 1, TokenSource.UNAVAILABLE, [value])])
        for name, value in (("first", -1.0), ("second", -2.0))
    ]
    results = answers_to_proto(answers)
    assert [r.sample_id for r in results] == ["first", "second"]
    assert [np.frombuffer(r.logprobs, "<f4").tolist() for r in results] == [[-1.0], [-2.0]]
    assert [r.sources for r in results] == [bytes([TokenSource.UNAVAILABLE])] * 2


def test_a_spot_check_report_keeps_its_numbers():
    check = spot_check_to_proto(SpotCheckReport(tokens_checked=17, max_abs_error=0.25, mean_abs_error=0.125))
    assert (check.tokens_checked, check.max_abs_error, check.mean_abs_error) == (17, 0.25, 0.125)


@pytest.mark.parametrize(
    ("state", "wire_state"), [(VersionState.RETAINED, pb.VERSION_STATE_RETAINED), (VersionState.EVICTED, pb.VERSION_STATE_EVICTED)]
)
@pytest.mark.parametrize("resident", [True, False])
def test_a_version_record_keeps_every_field(state, wire_state, resident):
    record = VersionRecord(
        policy_version=7, snapshot_path="/snapshots/v7", digest="abc", model_config_hash="cfg", dtype="bfloat16",
        created_at=1234.5, state=state, covers_versions=(3, 5),
    )  # fmt: skip
    info = version_to_proto(record, resident=resident)
    assert (info.policy_version, info.snapshot_path, info.digest, info.model_config_hash, info.dtype) == (
        7, "/snapshots/v7", "abc", "cfg", "bfloat16",
    )  # fmt: skip
    assert info.created_at == 1234.5
    assert info.state == wire_state
    assert info.resident is resident
    assert list(info.covers_versions) == [3, 5]

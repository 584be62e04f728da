"""Pure tests of logit_client.requests: spans from version tags, request packing, answer alignment, padding."""

from __future__ import annotations

import numpy as np
import pytest
from logit_client.requests import (
    ProtocolError,
    ScoreResult,
    SequenceInput,
    as_int_array,
    build_score_request,
    pack_token_ids,
    parse_score_response,
    spans_from_versions,
)

from logit_service.errors import LogitServiceError
from logit_service.types import MAX_TEMPERATURE, MIN_TEMPERATURE, Span, TokenSource
from logit_service.v1 import logit_service_pb2 as pb


@pytest.mark.parametrize(
    ("versions", "expected"),
    [
        pytest.param([-1, -1, -1], [], id="prompt only"),
        pytest.param([-1, -1, 4, 4, 4], [(4, 2, 5)], id="one version"),
        pytest.param([-1, 3, 3, 5, 7, 7], [(3, 1, 3), (5, 3, 4), (7, 4, 6)], id="three versions"),
        pytest.param([-1, 2, 2, -1, -1, 2, 9, -1], [(2, 1, 3), (2, 5, 6), (9, 6, 7)], id="gaps split runs"),
        pytest.param([], [], id="empty"),
        pytest.param(np.array([-1, 0, 0], dtype=np.int8), [(0, 1, 3)], id="numpy int8, version 0"),
    ],
)
def test_spans_from_versions(versions, expected):
    assert spans_from_versions(versions) == expected


def test_spans_from_versions_refuses_a_scored_first_position():
    with pytest.raises(ValueError, match="position 0"):
        spans_from_versions([3, 3, 3])


def test_spans_from_versions_refuses_non_integers():
    with pytest.raises(ValueError, match="integers"):
        spans_from_versions([-1.0, 2.0])


def _tokens(request: pb.ScoreRequest, index: int) -> list[int]:
    return np.frombuffer(request.sequences[index].token_ids, dtype="<i4").tolist()


def test_build_score_request_packs_tokens_and_spans():
    request = build_score_request(
        [
            SequenceInput([5, 6, 7, 8, 9], ((3, 1, 3), (4, 3, 5)), "a"),
            SequenceInput.from_versions(np.array([1, 2, 3], dtype=np.int64), [-1, -1, 8], "b"),
        ],
        temperature=0.7,
        allow_ewma_fallback=True,
        spot_check_fraction=0.25,
        request_id="r1",
    )
    assert _tokens(request, 0) == [5, 6, 7, 8, 9]
    assert _tokens(request, 1) == [1, 2, 3]
    assert [(s.policy_version, s.start, s.end) for s in request.sequences[0].spans] == [(3, 1, 3), (4, 3, 5)]
    assert [(s.policy_version, s.start, s.end) for s in request.sequences[1].spans] == [(8, 2, 3)]
    assert [s.sample_id for s in request.sequences] == ["a", "b"]
    assert request.temperature == pytest.approx(0.7)
    assert request.allow_ewma_fallback and request.request_id == "r1"
    assert request.spot_check_fraction == pytest.approx(0.25)


class _ArrayLike:
    """Stands in for a CPU tensor: readable only through __array__."""

    def __init__(self, values):
        self._values = np.asarray(values, dtype=np.int64)

    def __array__(self, dtype=None, copy=None):
        return self._values if dtype is None else self._values.astype(dtype)


def test_build_score_request_reads_array_likes():
    request = build_score_request([SequenceInput(_ArrayLike([10, 11, 12]), ((0, 1, 3),))])
    assert _tokens(request, 0) == [10, 11, 12]


@pytest.mark.parametrize(
    "token_ids",
    [
        pytest.param([1, 2**31], id="above int32"),
        pytest.param(np.array([1, 2**40], dtype=np.int64), id="int64 array above int32"),
        pytest.param(np.array([1, 2**63], dtype=np.uint64), id="uint64 above int64"),
    ],
)
def test_build_score_request_refuses_int32_overflow(token_ids):
    with pytest.raises(ValueError, match="int32"):
        build_score_request([SequenceInput(token_ids, ((0, 1, 2),))])


@pytest.mark.parametrize(
    ("spans", "match"),
    [
        pytest.param(((0, 0, 2),), "1 <= start", id="position 0"),
        pytest.param(((0, 2, 5),), "1 <= start", id="past the end"),
        pytest.param(((0, 2, 2),), "1 <= start", id="empty span"),
        pytest.param(((0, 1, 3), (1, 2, 4)), "overlaps", id="overlap"),
        pytest.param(((-1, 1, 3),), "policy_version", id="negative version"),
    ],
)
def test_build_score_request_refuses_bad_spans(spans, match):
    with pytest.raises(ValueError, match=match):
        build_score_request([SequenceInput([1, 2, 3, 4], spans)])


def test_build_score_request_refuses_nothing_to_score():
    with pytest.raises(ValueError, match="no spans"):
        build_score_request([SequenceInput.from_versions([1, 2, 3], [-1, -1, -1])])
    with pytest.raises(ValueError, match="no sequences"):
        build_score_request([])


def test_build_score_request_refuses_bad_options():
    with pytest.raises(ValueError, match="temperature"):
        build_score_request([], temperature=0.0)
    with pytest.raises(ValueError, match="spot_check_fraction"):
        build_score_request([], spot_check_fraction=1.5)


def _span_result(requested, served, start, end, source):
    return pb.SpanResult(
        requested_version=requested,
        served_version=served,
        snapshot_digest=f"sha-{served}",
        start=start,
        end=end,
        source=source,
    )


def _request_and_response():
    """Sequence "a": tokens 1..2 under v3 (exact), 3..4 under v4 (EWMA, served as v6); "b": one token."""
    request = build_score_request(
        [SequenceInput([5, 6, 7, 8, 9, 1], ((3, 1, 3), (4, 3, 5)), "a"), SequenceInput([2, 3], ((6, 1, 2),), "b")]
    )
    response = pb.ScoreResponse(
        results=[
            pb.SequenceResult(
                sample_id="a",
                logprobs=np.array([-0.5, -1.5, -2.5, -3.5], dtype="<f4").tobytes(),
                sources=bytes([1, 1, 2, 2]),
                spans=[_span_result(3, 3, 1, 3, pb.TOKEN_SOURCE_EXACT), _span_result(4, 6, 3, 5, pb.TOKEN_SOURCE_EWMA)],
            ),
            pb.SequenceResult(
                sample_id="b",
                logprobs=np.array([-0.25], dtype="<f4").tobytes(),
                sources=bytes([1]),
                spans=[_span_result(6, 6, 1, 2, pb.TOKEN_SOURCE_EXACT)],
            ),
        ],
        tokens_scored=5,
        backend="torch",
        dtype="float32",
        spot_check=pb.SpotCheck(tokens_checked=2, max_abs_error=0.01, mean_abs_error=0.005),
        compute_seconds=0.125,
    )
    return request, response


def test_parse_score_response_aligns_with_the_full_sequence():
    result = parse_score_response(*_request_and_response())
    a, b = result.sequences
    assert a.sample_id == "a" and b.sample_id == "b"
    nan = np.nan
    np.testing.assert_array_equal(a.logprobs, np.array([nan, -0.5, -1.5, -2.5, -3.5, nan], dtype=np.float32))
    assert a.logprobs.dtype == np.float32
    np.testing.assert_array_equal(a.sources, [0, 1, 1, 2, 2, 0])
    assert a.sources.dtype == np.uint8
    np.testing.assert_array_equal(a.served_versions, [-1, 3, 3, 6, 6, -1])
    assert a.served_versions.dtype == np.int64
    np.testing.assert_array_equal(a.mask, [False, True, True, True, True, False])
    assert a.spans[1].source is TokenSource.EWMA
    assert (a.spans[1].requested_version, a.spans[1].served_version) == (4, 6)
    assert a.spans[1].snapshot_digest == "sha-6"
    np.testing.assert_array_equal(b.logprobs, np.array([nan, -0.25], dtype=np.float32))
    assert (result.tokens_scored, result.backend, result.dtype) == (5, "torch", "float32")
    assert result.spot_check.tokens_checked == 2
    assert result.spot_check.max_abs_error == pytest.approx(0.01)
    assert result.compute_seconds == pytest.approx(0.125)


def test_padded_arrays_are_batch_by_width():
    result = parse_score_response(*_request_and_response())
    logprobs = result.padded()
    assert logprobs.shape == (2, 6) and logprobs.dtype == np.float32
    np.testing.assert_array_equal(logprobs[0], [0.0, -0.5, -1.5, -2.5, -3.5, 0.0])
    np.testing.assert_array_equal(logprobs[1], [0.0, -0.25, 0.0, 0.0, 0.0, 0.0])

    wide = result.padded(pad_value=-9.0, width=8)
    assert wide.shape == (2, 8)
    np.testing.assert_array_equal(wide[1], [-9.0, -0.25, -9.0, -9.0, -9.0, -9.0, -9.0, -9.0])

    sources = result.padded_sources()
    assert sources.dtype == np.uint8
    np.testing.assert_array_equal(sources, [[0, 1, 1, 2, 2, 0], [0, 1, 0, 0, 0, 0]])
    versions = result.padded_versions(width=7)
    assert versions.dtype == np.int64
    np.testing.assert_array_equal(versions, [[-1, 3, 3, 6, 6, -1, -1], [-1, 6, -1, -1, -1, -1, -1]])

    with pytest.raises(ValueError, match="width"):
        result.padded(width=4)


def test_parse_keeps_unavailable_tokens_nan_and_marked():
    request = build_score_request([SequenceInput([1, 2, 3], ((9, 1, 3),), "x")])
    response = pb.ScoreResponse(
        results=[
            pb.SequenceResult(
                sample_id="x",
                logprobs=np.array([np.nan, np.nan], dtype="<f4").tobytes(),
                sources=bytes([3, 3]),
                spans=[_span_result(9, -1, 1, 3, pb.TOKEN_SOURCE_UNAVAILABLE)],
            )
        ]
    )
    (x,) = parse_score_response(request, response)
    assert np.isnan(x.logprobs).all()
    np.testing.assert_array_equal(x.sources, [0, 3, 3])
    assert x.spans[0].source is TokenSource.UNAVAILABLE


def _corrupt(mutate):
    request, response = _request_and_response()
    mutate(response)
    return request, response


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        pytest.param(lambda r: setattr(r.results[0], "logprobs", r.results[0].logprobs[:-4]),
                     "logprobs must be 16 bytes", id="logprobs one value short"),
        pytest.param(lambda r: setattr(r.results[0], "sources", r.results[0].sources + b"\x01"),
                     "sources 4 bytes", id="sources one value long"),
        pytest.param(lambda r: r.results.pop(), "answered 1 sequences", id="missing sequence"),
        pytest.param(lambda r: setattr(r.results[1], "sample_id", "z"), "sample_id", id="sample id mismatch"),
        pytest.param(lambda r: setattr(r.results[0].spans[1], "end", 6), "differ from the requested",
                     id="answered an unrequested position"),
        pytest.param(lambda r: setattr(r.results[0].spans[1], "end", 7), "outside", id="span past the end"),
        pytest.param(lambda r: setattr(r.results[0].spans[1], "start", 2), "overlaps", id="overlapping answers"),
    ],
)
def test_parse_refuses_inconsistent_answers(mutate, match):
    with pytest.raises(ProtocolError, match=match) as caught:
        parse_score_response(*_corrupt(mutate))
    assert isinstance(caught.value, LogitServiceError) and not caught.value.retryable


def test_from_versions_defaults_to_an_empty_sample_id():
    assert SequenceInput.from_versions([1, 2, 3], [-1, 4, 4]).sample_id == ""


def test_from_versions_refuses_misaligned_tags_naming_both_lengths():
    with pytest.raises(ValueError, match="versions has 2 tags for 3 tokens"):
        SequenceInput.from_versions([1, 2, 3], [-1, 4])


@pytest.mark.parametrize(
    ("versions", "match"),
    [
        pytest.param([0, 0, 0], "versions\\[0\\] is 0", id="version 0 at position 0"),
        pytest.param([3, 5], "versions\\[0\\] is 3", id="names the first tag, not the second"),
        pytest.param([[-1, 2]], "versions must be 1-D", id="2-D tags named versions"),
    ],
)
def test_spans_from_versions_errors_name_the_offending_tag(versions, match):
    with pytest.raises(ValueError, match=match):
        spans_from_versions(versions)


def test_parse_errors_name_the_sequence_and_its_sample_id():
    with pytest.raises(ProtocolError, match="sequence 1 \\(sample_id 'b'\\)"):
        parse_score_response(*_corrupt(lambda r: setattr(r.results[1], "sample_id", "z")))


def test_parse_refuses_an_empty_answered_span():
    # An empty span covers no position, so the mask check alone cannot see it; it still breaks the contract.
    def add_empty_span(response):
        response.results[1].spans.append(_span_result(6, 6, 2, 2, pb.TOKEN_SOURCE_EXACT))

    with pytest.raises(ProtocolError, match="outside"):
        parse_score_response(*_corrupt(add_empty_span))


def test_padding_an_empty_result_gives_an_empty_batch():
    empty = ScoreResult(sequences=[])
    assert empty.padded().shape == (0, 0)
    assert empty.padded_sources().shape == (0, 0)
    assert empty.padded_versions().shape == (0, 0)


def test_padding_to_exactly_the_longest_sequence_is_allowed():
    result = parse_score_response(*_request_and_response())
    assert result.padded(width=6).shape == (2, 6)
    assert result.padded_sources(width=6).shape == (2, 6)


def test_padded_sources_honours_the_width():
    result = parse_score_response(*_request_and_response())
    sources = result.padded_sources(pad_value=7, width=8)
    assert sources.shape == (2, 8)
    np.testing.assert_array_equal(sources[1], [0, 1, 7, 7, 7, 7, 7, 7])


@pytest.mark.parametrize(
    ("token_ids", "match"),
    [
        pytest.param([3, -1], "token_ids holds a negative token id \\(-1\\)", id="negative, named token_ids"),
        pytest.param([[1, 2]], "token_ids must be 1-D", id="2-D, named token_ids"),
        pytest.param([1, 2**31], "token_ids holds token id 2147483648", id="int32 overflow, named token_ids"),
    ],
)
def test_pack_token_ids_errors_name_the_field(token_ids, match):
    with pytest.raises(ValueError, match=match):
        pack_token_ids(token_ids)


def test_pack_token_ids_accepts_the_int32_range_edges():
    # Token id 0 is a real vocabulary entry, and 2**31 - 1 is the largest id the wire's int32 holds.
    packed = pack_token_ids([0, 2**31 - 1])
    assert np.frombuffer(packed, dtype="<i4").tolist() == [0, 2**31 - 1]


def test_build_score_request_defaults_ask_for_exact_answers_only():
    request = build_score_request([SequenceInput([1, 2, 3], ((0, 1, 3),))])
    assert not request.allow_ewma_fallback and not request.force_ewma
    assert request.spot_check_fraction == 0.0 and request.request_id == ""
    assert request.temperature == 1.0


def test_build_score_request_accepts_the_edges_of_each_option():
    sequence = SequenceInput([1, 2, 3], ((2**63 - 1, 1, 3),))
    for temperature in (MIN_TEMPERATURE, MAX_TEMPERATURE):
        assert build_score_request([sequence], temperature=temperature).temperature == pytest.approx(temperature)
    assert build_score_request([sequence], spot_check_fraction=1.0).spot_check_fraction == 1.0
    assert build_score_request([sequence]).sequences[0].spans[0].policy_version == 2**63 - 1


def test_build_score_request_checks_spans_in_position_order_whatever_their_versions():
    # The later span carries the lower version (a resumed rollout under an older snapshot): ordered by
    # version, [3, 5) would be checked first and [1, 3) would look like an overlap.
    request = build_score_request([SequenceInput([1, 2, 3, 4, 5], ((7, 1, 3), (2, 3, 5)))])
    assert [(s.policy_version, s.start, s.end) for s in request.sequences[0].spans] == [(7, 1, 3), (2, 3, 5)]


def test_an_overlap_is_reported_on_the_span_that_starts_inside_another():
    with pytest.raises(ValueError, match="span \\[2, 3\\) overlaps a span ending at 5"):
        build_score_request([SequenceInput([1, 2, 3, 4, 5, 6], ((0, 1, 5), (1, 2, 3)))])


@pytest.mark.parametrize(
    ("numerics", "name"),
    [
        pytest.param(pb.NUMERICS_TRAINING, "training", id="training"),
        pytest.param(pb.NUMERICS_INFERENCE, "inference", id="inference"),
        pytest.param(pb.NUMERICS_UNSPECIFIED, "", id="unsaid"),
    ],
)
def test_parse_names_the_numerics(numerics, name):
    request, response = _request_and_response()
    response.numerics = numerics
    assert parse_score_response(request, response).numerics == name


def test_parse_keeps_the_spot_check_mean_error():
    assert parse_score_response(*_request_and_response()).spot_check.mean_abs_error == pytest.approx(0.005)


def test_as_int_array_reads_torch_tensors_through_the_host():
    torch = pytest.importorskip("torch")
    assert as_int_array(torch.tensor([4, 5, 6]), "token_ids").tolist() == [4, 5, 6]
    # A tensor that takes part in autograd cannot be read by numpy until it is detached: the client
    # detaches it, so the caller sees the dtype complaint, not torch's.
    with pytest.raises(ValueError, match="token_ids must be integers, got dtype float32"):
        as_int_array(torch.tensor([1.0, 2.0], requires_grad=True), "token_ids")


def test_as_int_array_gives_an_empty_input_an_integer_dtype():
    assert as_int_array([], "token_ids").dtype == np.int64


def test_as_int_array_names_values_beyond_64_bits():
    with pytest.raises(ValueError, match="^token_ids holds values that are not representable as 64-bit integers$"):
        as_int_array([2**64, 1], "token_ids")


@pytest.mark.parametrize(
    "span",
    [
        pytest.param(Span(3, 1, 3), id="a Span"),
        pytest.param(pb.VersionSpan(policy_version=3, start=1, end=3), id="a VersionSpan proto"),
        pytest.param([3, 1, 3], id="a list"),
    ],
)
def test_sequence_input_keeps_spans_as_plain_tuples(span):
    assert SequenceInput([1, 2, 3], (span,)).spans == ((3, 1, 3),)


def test_build_score_request_passes_force_ewma():
    assert build_score_request([SequenceInput([1, 2, 3], ((0, 1, 3),))], force_ewma=True).force_ewma


@pytest.mark.parametrize(
    ("sequences", "match"),
    [
        pytest.param(
            [SequenceInput([1, 2], ((0, 1, 2),), "a"), SequenceInput([1, -2], ((0, 1, 2),), "b")],
            "^sequences\\[1\\] \\(sample_id 'b'\\)\\.token_ids holds a negative token id",
            id="token error names the sequence",
        ),
        pytest.param(
            [SequenceInput([1, 2, 3, 4], ((0, 2, 6),), "a")],
            "^sequences\\[0\\] \\(sample_id 'a'\\): span \\[2, 6\\) must satisfy 1 <= start < end <= len\\(token_ids\\) = 4$",
            id="span error names the sequence and its length",
        ),
        pytest.param([], "^no sequences to score$", id="nothing at all"),
    ],
)
def test_build_score_request_errors_say_where(sequences, match):
    with pytest.raises(ValueError, match=match):
        build_score_request(sequences)

"""Every malformed request answers INVALID_ARGUMENT (or its documented status) on every RPC, over the
real wire: never INTERNAL, never UNKNOWN. SubmitSegments refuses what Score would refuse, as Score would."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from logit_client import LogitClient
from logit_service.v1 import logit_service_pb2 as pb
from logit_service.v1 import logit_service_pb2_grpc as pb_grpc
from tests.helpers import VOCAB, random_tokens

TIMEOUT_S = 30
SERVICE = "/logit_service.v1.LogitService/"
METHODS = ["Score", "PublishVersion", "GetVersion", "ListVersions", "LeaseVersions", "SubmitSegments", "Barrier"]


@pytest.fixture
def server(make_server, snapshot_dir, trained):
    server = make_server(snapshot_dir, retention_window=2, ewma_enabled=False)
    with LogitClient(server.address, timeout_s=TIMEOUT_S) as client:
        for version in range(3):  # K=2 keeps versions 1 and 2
            client.publish(version, trained.states[version], snapshot_dir, model_config=trained.config)
    return server


@pytest.fixture
def channel(server):
    channel = grpc.insecure_channel(server.address)
    yield channel
    channel.close()


@pytest.fixture
def stub(channel):
    return pb_grpc.LogitServiceStub(channel)


def _code(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=TIMEOUT_S)
    return info.value.code(), info.value.details()


# --- bytes that do not decode -------------------------------------------------------------------------

_BAD_UTF8 = b"\xff\xfe"
# A string field holding invalid UTF-8, per method that has one (field number << 3 | 2, length, bytes).
_BAD_STRING = {
    "Score": b"\x2a\x02" + _BAD_UTF8,  # request_id = 5
    "PublishVersion": b"\x12\x02" + _BAD_UTF8,  # snapshot_path = 2
    "LeaseVersions": b"\x0a\x02" + _BAD_UTF8,  # holder = 1
    "SubmitSegments": b"\x0a\x04\x0a\x02" + _BAD_UTF8,  # segments[0].sample_id
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\xff\xff\xff", id="torn wire format"),
        pytest.param(b"\x0a\x7f\x01", id="length past the end"),
        pytest.param("bad utf-8", id="bad utf-8 in a string field"),
    ],
)
def test_undecodable_bytes_answer_invalid_argument(channel, method, payload):
    if payload == "bad utf-8":
        if method not in _BAD_STRING:
            pytest.skip(f"{method} has no string field")
        payload = _BAD_STRING[method]
    raw = channel.unary_unary(SERVICE + method, request_serializer=None, response_deserializer=None)
    code, details = _code(raw, payload)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "do not decode" in details


# --- fields out of bounds -----------------------------------------------------------------------------

TOKENS = random_tokens(20, seed=0)


def _sequence(tokens=TOKENS, spans=((2, 1, 20),), sample_id="s") -> pb.Sequence:
    return pb.Sequence(
        sample_id=sample_id,
        token_ids=np.asarray(tokens).astype("<i4").tobytes(),
        spans=[pb.VersionSpan(policy_version=v, start=a, end=b) for v, a, b in spans],
    )


def _score(**fields) -> tuple[str, pb.ScoreRequest]:
    return "Score", pb.ScoreRequest(**{"sequences": [_sequence()], **fields})


def _publish(path: str, version: int = 3) -> tuple[str, pb.PublishVersionRequest]:
    return "PublishVersion", pb.PublishVersionRequest(policy_version=version, snapshot_path=path)


def _lease(holder="rollout-1", versions=(2,), **fields) -> tuple[str, pb.LeaseVersionsRequest]:
    return "LeaseVersions", pb.LeaseVersionsRequest(holder=holder, policy_versions=list(versions), ttl_s=10, **fields)


@pytest.mark.parametrize(
    ("call", "code", "fragment"),
    [
        pytest.param(_publish("v0000\x003"), "INVALID_ARGUMENT", "NUL", id="publish: NUL byte"),
        pytest.param(_publish("v" * 256), "INVALID_ARGUMENT", "longer than 255", id="publish: 256-byte name"),
        pytest.param(_publish("a/" * 2500), "INVALID_ARGUMENT", "limit is 4096", id="publish: path over PATH_MAX"),
        pytest.param(_publish("../v00000003"), "INVALID_ARGUMENT", "outside", id="publish: parent component"),
        pytest.param(_publish("v1/../../v00000003"), "INVALID_ARGUMENT", "outside", id="publish: parent inside"),
        pytest.param(_publish(".tmp-v00000003-abc"), "INVALID_ARGUMENT", "hidden", id="publish: in-progress dir"),
        pytest.param(_publish("."), "INVALID_ARGUMENT", "itself", id="publish: the snapshot dir itself"),
        pytest.param(_publish("/"), "INVALID_ARGUMENT", "outside", id="publish: root of the file system"),
        pytest.param(_publish("v00000404"), "INVALID_ARGUMENT", "not a directory", id="publish: missing dir"),
        pytest.param(_publish("v00000002", version=-1), "INVALID_ARGUMENT", ">= 0", id="publish: negative version"),
        pytest.param(_publish(""), "INVALID_ARGUMENT", "empty", id="publish: empty path"),
        pytest.param(("GetVersion", pb.GetVersionRequest(policy_version=-1)), "INVALID_ARGUMENT", ">= 0", id="get: negative version"),
        pytest.param(("Barrier", pb.BarrierRequest(policy_version=-5)), "INVALID_ARGUMENT", ">= 0", id="barrier: negative version"),
        pytest.param(_lease(holder=""), "INVALID_ARGUMENT", "holder is empty", id="lease: no holder"),
        pytest.param(_lease(holder="a\x00b"), "INVALID_ARGUMENT", "NUL", id="lease: NUL in holder"),
        pytest.param(_lease(holder="h" * 257), "INVALID_ARGUMENT", "limit is 256", id="lease: 257-byte holder"),
        pytest.param(_lease(holder="é" * 129), "INVALID_ARGUMENT", "limit is 256", id="lease: holder bounded in bytes"),
        pytest.param(_lease(holder="a\x00b", release=True), "INVALID_ARGUMENT", "NUL", id="release: NUL in holder"),
        pytest.param(_lease(versions=range(2000)), "RESOURCE_EXHAUSTED", "limit of 1024", id="lease: too many versions"),
        pytest.param(_lease(versions=(-3,)), "INVALID_ARGUMENT", ">= 0", id="lease: negative version"),
        pytest.param(_score(request_id="r\x00"), "INVALID_ARGUMENT", "request_id", id="score: NUL in request_id"),
        pytest.param(_score(request_id="r" * 300), "INVALID_ARGUMENT", "limit is 256", id="score: long request_id"),
        pytest.param(
            ("Score", pb.ScoreRequest(sequences=[_sequence(sample_id="s" * 1025)])),
            "INVALID_ARGUMENT", "limit is 1024", id="score: long sample_id",
        ),  # fmt: skip
        pytest.param(
            ("Score", pb.ScoreRequest(sequences=[_sequence(sample_id="s\x00")])),
            "INVALID_ARGUMENT", "sample_id", id="score: NUL in sample_id",
        ),  # fmt: skip
        pytest.param(
            ("Score", pb.ScoreRequest(sequences=[_sequence(TOKENS[:3], spans=[(2, 1, 2)] * 50)])),
            "INVALID_ARGUMENT", "50 spans but only 3 tokens", id="score: more spans than tokens",
        ),  # fmt: skip
        pytest.param(
            ("SubmitSegments", pb.SubmitSegmentsRequest(segments=[_sequence(sample_id="s" * 1025)])),
            "INVALID_ARGUMENT", "limit is 1024", id="submit: long sample_id",
        ),  # fmt: skip
    ],
)
def test_out_of_bounds_fields_answer_their_status(channel, call, code, fragment):
    method, request = call
    stub_call = channel.unary_unary(
        SERVICE + method, request_serializer=type(request).SerializeToString, response_deserializer=None
    )
    got, details = _code(stub_call, request)
    assert got == getattr(grpc.StatusCode, code), details
    assert fragment in details


def test_request_limits_are_checked_before_conversion(make_server, snapshot_dir, trained):
    server = make_server(snapshot_dir, max_tokens_per_request=64, max_sequences_per_request=2, ewma_enabled=False)
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.LogitServiceStub(channel)
        many = [_sequence(TOKENS[:4], spans=[(0, 1, 4)])] * 3
        for call, request in (
            (stub.Score, pb.ScoreRequest(sequences=many)),
            (stub.SubmitSegments, pb.SubmitSegmentsRequest(segments=many)),
            (stub.Score, pb.ScoreRequest(sequences=[_sequence(random_tokens(65, 1), spans=[(0, 1, 65)])])),
        ):
            code, details = _code(call, request)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "exceed the limit" in details


# --- SubmitSegments refuses what Score would refuse --------------------------------------------------

OUT_OF_VOCAB = TOKENS.copy()
OUT_OF_VOCAB[5] = VOCAB


@pytest.mark.parametrize(
    ("sequence", "code"),
    [
        pytest.param(_sequence(spans=((7, 1, 20),)), "NOT_FOUND", id="never published"),
        pytest.param(_sequence(spans=((0, 1, 20),)), "FAILED_PRECONDITION", id="outside the window"),
        pytest.param(_sequence(spans=((2, 1, 10), (7, 10, 20))), "NOT_FOUND", id="one span of an unknown version"),
        pytest.param(_sequence(OUT_OF_VOCAB), "INVALID_ARGUMENT", id="token outside the vocabulary"),
        pytest.param(_sequence(spans=((2, 1, 21),)), "INVALID_ARGUMENT", id="span past the end"),
        pytest.param(_sequence(spans=((2, 0, 5),)), "INVALID_ARGUMENT", id="span scoring position 0"),
        pytest.param(_sequence(spans=((2, 1, 10), (1, 8, 12))), "INVALID_ARGUMENT", id="overlapping spans"),
        pytest.param(_sequence(spans=()), "INVALID_ARGUMENT", id="no spans"),
        pytest.param(_sequence(TOKENS[:1], spans=((2, 1, 1),)), "INVALID_ARGUMENT", id="one token"),
        pytest.param(
            pb.Sequence(token_ids=b"\x01\x02\x03", spans=[pb.VersionSpan(policy_version=2, start=1, end=2)]),
            "INVALID_ARGUMENT", id="torn int32 payload",
        ),  # fmt: skip
    ],
)
def test_submit_refuses_what_score_refuses_with_the_same_status(stub, sequence, code):
    stub.Score(pb.ScoreRequest(sequences=[_sequence()]), timeout=TIMEOUT_S)  # builds the model: vocabulary known
    score_code, score_details = _code(stub.Score, pb.ScoreRequest(sequences=[sequence]))
    submit_code, submit_details = _code(stub.SubmitSegments, pb.SubmitSegmentsRequest(segments=[sequence]))
    assert score_code == submit_code == getattr(grpc.StatusCode, code), (score_details, submit_details)
    assert stub.Barrier(pb.BarrierRequest(policy_version=10), timeout=TIMEOUT_S).pending_tokens == 0  # nothing queued


def test_submit_accepts_a_good_segment_beside_none_refused(stub):
    accepted = stub.SubmitSegments(pb.SubmitSegmentsRequest(segments=[_sequence()]), timeout=TIMEOUT_S)
    assert accepted.accepted_tokens == 19
    assert stub.Barrier(pb.BarrierRequest(policy_version=2), timeout=TIMEOUT_S).kept_segments == 1

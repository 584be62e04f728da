"""Bounded work and memory over the real wire: byte limits checked before decoding, counts read off the
wire format, decoding off the event loop, an in-flight byte budget, segment stores and lease holders
bounded in bytes and numbers."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from logit_client import LogitClient
from logit_service import errors
from logit_service.v1 import logit_service_pb2 as pb
from logit_service.v1 import logit_service_pb2_grpc as pb_grpc
from tests.helpers import random_tokens

TIMEOUT_S = 120
SERVICE = "/logit_service.v1.LogitService/"
KiB = 1 << 10


def _raw(channel: grpc.Channel, method: str):
    """A stub that sends the given bytes as they are: the server sees exactly what the test built."""
    return channel.unary_unary(SERVICE + method, request_serializer=None, response_deserializer=None)


def _refusal(call, payload: bytes) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(payload, timeout=TIMEOUT_S)
    return info.value.code(), info.value.details()


def _compute_held(server) -> threading.Event:
    """Occupies the server's one compute thread until the event is set: calls that reach it wait, in
    flight, holding what they were sent."""
    release = threading.Event()
    compute = server.running.executors[0]
    started = threading.Event()
    compute.submit(lambda: (started.set(), release.wait(TIMEOUT_S)))
    assert started.wait(30)
    return release


def _sequence(token_ids, spans, sample_id: str = "") -> pb.Sequence:
    return pb.Sequence(
        sample_id=sample_id,
        token_ids=np.asarray(token_ids, dtype="<i4").tobytes(),
        spans=[pb.VersionSpan(policy_version=v, start=s, end=e) for v, s, e in spans],
    )


@pytest.fixture
def published(make_server, snapshot_dir, trained):
    def start(**overrides):
        server = make_server(snapshot_dir, ewma_enabled=False, **overrides)
        with LogitClient(server.address, timeout_s=TIMEOUT_S) as client:
            client.publish(0, trained.states[0], snapshot_dir, model_config=trained.config)
        return server

    return start


# --- before decoding ----------------------------------------------------------------------------------


def test_requests_over_their_methods_byte_limit_are_refused_before_they_are_decoded(make_server, snapshot_dir):
    server = make_server(snapshot_dir, max_request_bytes=128 * KiB)
    with grpc.insecure_channel(server.address) as channel:
        # Bytes that would answer INVALID_ARGUMENT if anything decoded them.
        for method in ("Score", "SubmitSegments"):
            # Refused by gRPC's own receive limit, which is set to the same number, before any handler.
            code, details = _refusal(_raw(channel, method), b"\xff" * (200 * KiB))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and str(128 * KiB) in details, (method, details)
        for method in ("PublishVersion", "GetVersion", "ListVersions", "LeaseVersions", "Barrier"):
            code, details = _refusal(_raw(channel, method), b"\xff" * (100 * KiB))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (method, details)
            assert f"exceed the limit of {64 * KiB} bytes per {method} request" in details
        # Under Score's own limit the same bytes are decoded, and refused for what they are.
        code, details = _refusal(_raw(channel, "Score"), b"\xff" * (100 * KiB))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "do not decode" in details


def test_millions_of_empty_sequences_or_spans_are_refused_from_the_wire_counts(make_server, snapshot_dir):
    server = make_server(snapshot_dir, max_tokens_per_request=1000)
    empty_sequences = b"\x0a\x00" * (3 * (1 << 20) // 2)  # 3 MiB: 1.5 million empty Sequence messages
    empty_spans = b"\x1a\x00" * 500_000
    one_sequence_of_empty_spans = b"\x0a" + _varint(len(empty_spans)) + empty_spans
    with grpc.insecure_channel(server.address) as channel:
        for method in ("Score", "SubmitSegments"):
            code, details = _refusal(_raw(channel, method), empty_sequences)
            # "at least 4097": the walk stopped at the first sequence over the limit, nothing was decoded
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
            assert "at least 4097 sequences exceed the limit of 4096" in details
            code, details = _refusal(_raw(channel, method), one_sequence_of_empty_spans)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "more than 1000 spans" in details
        code, details = _refusal(_raw(channel, "Score"), pb.ScoreRequest(
            sequences=[_sequence(random_tokens(600, 0), [(0, 1, 600)])] * 2
        ).SerializeToString())  # fmt: skip
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "tokens exceed the limit of 1000" in details
        sample_id = "s" * 2000
        code, details = _refusal(_raw(channel, "Score"), pb.ScoreRequest(
            sequences=[_sequence(random_tokens(8, 0), [(0, 1, 8)], sample_id=sample_id)]
        ).SerializeToString())  # fmt: skip
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "sample_id is 2000 bytes long" in details


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


# --- off the event loop -------------------------------------------------------------------------------


def test_health_answers_while_a_big_request_is_decoded_and_converted(published):
    server = published()
    # Half a million one-token spans: walking, decoding and converting them is seconds of CPU work,
    # all of it in the decode threads. A control character in the last sequence's sample id refuses
    # the request at the end of the conversion, so the call ends as soon as that work is done.
    n = 500_000
    spans = [(0, i, i + 1) for i in range(1, n + 1)]
    big = pb.ScoreRequest(
        sequences=[_sequence(np.zeros(n + 1), spans), _sequence(np.zeros(4), [(0, 1, 4)], sample_id="bad\x01")]
    ).SerializeToString()
    budget = server.running.decoder.budget
    outcome: dict[str, object] = {}

    def send_big() -> None:
        with grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
            try:
                _raw(channel, "Score")(big, timeout=TIMEOUT_S)
                outcome["code"] = grpc.StatusCode.OK
            except grpc.RpcError as e:
                outcome["code"], outcome["details"] = e.code(), e.details()

    sender = threading.Thread(target=send_big)
    sender.start()
    deadline = time.monotonic() + TIMEOUT_S
    while budget.in_use < len(big):  # the server has the request's bytes: it is decoding them now
        assert time.monotonic() < deadline and sender.is_alive(), outcome
        time.sleep(0.005)  # poll interval
    with grpc.insecure_channel(server.address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_S)
    big_in_flight = sender.is_alive()
    sender.join(TIMEOUT_S)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert big_in_flight, "the big request ended before health answered"
    assert outcome["code"] == grpc.StatusCode.INVALID_ARGUMENT and "control character" in outcome["details"]
    assert budget.in_use == 0  # released with the call


# --- overload -----------------------------------------------------------------------------------------


def test_requests_beyond_the_in_flight_byte_budget_are_refused_at_once(make_server, snapshot_dir):
    server = make_server(snapshot_dir, max_request_bytes=64 * KiB, max_inflight_request_bytes=64 * KiB)
    request = pb.ScoreRequest(sequences=[_sequence(random_tokens(300, i), [(99, 1, 300)]) for i in range(30)])
    payload = request.SerializeToString()
    assert 32 * KiB < len(payload) <= 64 * KiB  # one fits the budget, two do not
    release = _compute_held(server)
    outcome: dict[str, object] = {}

    def send_first() -> None:
        with grpc.insecure_channel(server.address) as channel:
            try:
                _raw(channel, "Score")(payload, timeout=TIMEOUT_S)
            except grpc.RpcError as e:
                outcome["code"] = e.code()

    first = threading.Thread(target=send_first)
    first.start()
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while server.running.decoder.budget.in_use == 0:  # the first call holds its bytes
            assert time.monotonic() < deadline
            time.sleep(0.005)  # poll interval
        with grpc.insecure_channel(server.address) as channel:
            code, details = _refusal(_raw(channel, "Score"), payload)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "bytes of requests are already being decoded or served" in details
        assert first.is_alive()  # refused while the first was still waiting for the compute thread
    finally:
        release.set()
        first.join(TIMEOUT_S)
    assert outcome["code"] == grpc.StatusCode.NOT_FOUND  # the first one was served (version 99 is unknown)


# --- segment stores in bytes ----------------------------------------------------------------------------


def test_pending_segments_are_bounded_in_bytes_as_well_as_tokens(published):
    server = published(max_pending_bytes=64 * KiB)  # the token bound stays at a million
    release = _compute_held(server)  # nothing pending gets scored meanwhile
    accepted = 0
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.LogitServiceStub(channel)
            for i in range(200):  # two-token segments with 1 KiB sample ids
                segment = _sequence(random_tokens(2, i), [(0, 1, 2)], sample_id=f"{i:04d}" + "x" * 1020)
                try:
                    stub.SubmitSegments(pb.SubmitSegmentsRequest(segments=[segment]), timeout=TIMEOUT_S)
                    accepted += 1
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert "bytes of segments are already pending" in e.details()
                    assert f"limit of {64 * KiB}" in e.details()
                    break
    finally:
        release.set()
    # Each costs more than its sample id; their 2 tokens each are far under the token bound.
    assert 0 < accepted < 64 * KiB // 1024


def test_kept_answers_are_bounded_in_bytes_as_well_as_tokens(published):
    server = published(segment_cache_bytes=16 * KiB)  # the token bound stays at four million
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.LogitServiceStub(channel)
        segments = [_sequence(random_tokens(2, i), [(0, 1, 2)], sample_id=f"{i:04d}" + "x" * 1020) for i in range(40)]
        stub.SubmitSegments(pb.SubmitSegmentsRequest(segments=segments), timeout=TIMEOUT_S)
        barrier = stub.Barrier(pb.BarrierRequest(policy_version=0), timeout=TIMEOUT_S)
    assert barrier.pending_tokens == 0
    assert 0 < barrier.kept_segments <= 16 * KiB // 1024  # all 40 would be kept under the token bound alone


# --- lease holders ----------------------------------------------------------------------------------------


def test_lease_holders_are_bounded_per_version(published):
    server = published(max_lease_holders=3)
    with LogitClient(server.address, timeout_s=TIMEOUT_S, max_retries=0) as client:
        for holder in ("a", "b", "c"):
            client.lease_versions([0], holder=holder, ttl_s=60)
        with pytest.raises(errors.LeaseLimit, match="already leased by 3 holders"):
            client.lease_versions([0], holder="d", ttl_s=60)
        client.lease_versions([0], holder="a", ttl_s=120)  # a renewal is not a new holder
        client.release_versions([0], holder="b")
        assert client.lease_versions([0], holder="d", ttl_s=60) == (0,)
        with pytest.raises(errors.InvalidRequest, match="holder is 300 bytes long"):
            client.lease_versions([0], holder="h" * 300, ttl_s=60)
        assert client.get_version(0).leased

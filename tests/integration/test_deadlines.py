"""Deadlines mean what they say: no refusal before work without a measurement that justifies it, and a
call that expires or is cancelled mid-forward stops using the model between layers."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from logit_client import LogitClient, SequenceInput
from logit_service.v1 import logit_service_pb2 as pb
from logit_service.v1 import logit_service_pb2_grpc as pb_grpc
from tests.helpers import random_tokens


@pytest.fixture
def server(make_server, snapshot_dir, trained):
    server = make_server(snapshot_dir, retention_window=2)
    trained.write(snapshot_dir, 0)
    with LogitClient(server.address) as client:
        client.publish_version(0, str(snapshot_dir / "v00000000"))
    return server


def _request(tokens: np.ndarray) -> pb.ScoreRequest:
    spans = [pb.VersionSpan(policy_version=0, start=1, end=len(tokens))]
    return pb.ScoreRequest(sequences=[pb.Sequence(token_ids=tokens.astype("<i4").tobytes(), spans=spans)])


def test_a_tiny_first_call_does_not_make_a_large_one_look_impossible(server):
    """A 2-token call is overhead-bound and measures a low rate; a linear estimate from it once refused
    a 16k-token call with 20 s to spare before doing any work."""
    with LogitClient(server.address, timeout_s=60) as client:
        client.score([SequenceInput(np.array([1, 2]), spans=((0, 1, 2),))])
    request = pb.ScoreRequest(sequences=[_request(random_tokens(2048, seed=i)).sequences[0] for i in range(8)])
    with grpc.insecure_channel(server.address) as channel:
        response = pb_grpc.LogitServiceStub(channel).Score(request, timeout=20)  # one call of 16k tokens
    assert response.tokens_scored == 8 * 2047
    assert all(np.isfinite(np.frombuffer(r.logprobs, "<f4")).all() for r in response.results)


def _layer_log(server) -> tuple[list[str], threading.Event, list[float]]:
    """Hooks on the served model's two decoder layers: layer 0 stalls while `stall` holds a duration,
    and every layer that finishes is logged, so a test sees whether layer 1 ran after the stall."""
    layers = server.running.engine.backend.model.model.layers
    assert len(layers) == 2
    events: list[str] = []
    entered = threading.Event()
    stall: list[float] = []

    def slow_start(_module, _args):
        if stall:
            seconds = stall.pop()
            events.append("stalled")
            entered.set()
            time.sleep(seconds)

    layers[0].register_forward_pre_hook(slow_start)
    layers[1].register_forward_hook(lambda *_: events.append("layer 1 done"))
    return events, entered, stall


@pytest.mark.parametrize("how", ["deadline", "cancel"])
def test_a_call_that_ends_mid_forward_stops_before_the_next_layer(server, how):
    tokens = random_tokens(256, seed=3)
    channel = grpc.insecure_channel(server.address)
    stub = pb_grpc.LogitServiceStub(channel)
    before = stub.Score(_request(tokens), timeout=30).results[0].logprobs  # also builds the model
    events, entered, stall = _layer_log(server)
    events.clear()

    stall.append(1.5)
    if how == "deadline":
        with pytest.raises(grpc.RpcError) as info:
            stub.Score(_request(tokens), timeout=0.5)  # passes while layer 0 stalls, server side
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    else:
        call = stub.Score.future(_request(tokens), timeout=30)
        assert entered.wait(10), "the forward never started"
        call.cancel()
    # One compute thread: this call runs only after the stopped one has left the model.
    after = stub.Score(_request(tokens), timeout=30).results[0].logprobs
    channel.close()

    assert events[0] == "stalled"
    assert events[1:] == ["layer 1 done"], f"layer 1 ran for the call that had ended: {events}"
    assert after == before, "stopping a forward changed what the model answers afterwards"


def test_a_deadline_passed_between_versions_starts_no_further_work(server, trained, snapshot_dir):
    """The call reaches the server and its first version's forward runs; the deadline passes after that
    forward's last layer check, so only the engine's check before the next version can spare the weight
    swap and the forward of the second. The server's own counters show whether it did: its weight swaps,
    and which version was resident each time layer 0 was entered."""
    with LogitClient(server.address, timeout_s=60) as client:
        client.publish(1, trained.states[1], snapshot_dir, model_config=trained.config)
    tokens = random_tokens(40, seed=9)
    both = pb.ScoreRequest(sequences=[pb.Sequence(
        token_ids=tokens.astype("<i4").tobytes(),
        spans=[pb.VersionSpan(policy_version=0, start=1, end=20), pb.VersionSpan(policy_version=1, start=20, end=40)],
    )])  # fmt: skip
    channel = grpc.insecure_channel(server.address)
    stub = pb_grpc.LogitServiceStub(channel)
    stub.Score(_request(tokens), timeout=30)  # version 0 resident: it is forwarded first
    backend = server.running.engine.backend
    layers = backend.model.model.layers
    resident_at_layer_0: list[str] = []
    stall = [2.0]
    swaps_before = backend.swaps

    def after_last_layer(*_):  # past every check inside this forward
        if stall:
            time.sleep(stall.pop())

    hooks = [
        layers[0].register_forward_pre_hook(lambda *_: resident_at_layer_0.append(backend.resident_key)),
        layers[-1].register_forward_hook(after_last_layer),
    ]
    try:
        with pytest.raises(grpc.RpcError) as info:
            stub.Score(both, timeout=1.0)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        stub.Score(_request(tokens), timeout=30)  # one compute thread: runs after the expired call is done
    finally:
        for hook in hooks:
            hook.remove()
        channel.close()
    assert resident_at_layer_0 == ["0", "0"], f"a forward ran for the expired call: {resident_at_layer_0}"
    assert backend.swaps == swaps_before, "the expired call swapped in its second version's weights"


def test_a_call_that_cannot_finish_in_time_is_refused_for_every_token_it_would_forward(server):
    """The refusal before work counts the tokens the forward would take: the sequence up to its last
    scored position (40 here, for positions 1..39), not the positions scored."""
    server.running.engine._forward_times.record(100, 1000.0)  # a history of forwards at 10 s per token
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.LogitServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Score(_request(random_tokens(40, seed=5)), timeout=390)  # needs 400 s
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "40 tokens need at least 400.000 s" in info.value.details()
        response = stub.Score(_request(random_tokens(30, seed=5)), timeout=390)  # needs 300 s: it runs
    assert response.tokens_scored == 29

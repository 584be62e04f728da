"""The dedicated old-logit model answers a trajectory with the very bits of its segments scored one by
one (what the snapshot strategy computes), also when the trainer's Score arrives while some of those
segments are still waiting for the follower, over real gRPC.

Scoring a span in one forward over the whole trajectory is exact too, but not bit-identical to scoring
it one segment (over its own prefix) at a time: the forwards have other shapes. A Score that found only
part of a span kept used to compute the whole span itself, so the three exact strategies could differ in
the last bits depending on how far the follower had got.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from logit_client import LogitClient, SequenceInput, TokenSource

from logit_service import errors
from logit_service.v1 import logit_service_pb2 as pb
from logit_service.v1 import logit_service_pb2_grpc
from tests.helpers import random_tokens

WAIT_S = 120  # bound on every wait for a condition; never reached when the code works

# Trajectories of a prompt [0, 8), then two segments generated under version 0, interrupted at 14. The
# first segment's prefix falls in a shorter tile bucket than the whole trajectory, so a forward over the
# whole trajectory has another shape than the segment's own; several trajectories, because whether the
# two shapes give different last bits depends on the tokens (on this CPU, two of these eight do).
TRAJECTORIES = [random_tokens(56, seed=73 + i) for i in range(8)]
SEGMENTS = ((8, 14), (14, 56))


def _segment(tokens: np.ndarray, start: int, end: int, sample_id: str) -> SequenceInput:
    return SequenceInput(tokens[:end], spans=((0, start, end),), sample_id=sample_id)


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)  # polling a condition, not timing the code under test


def _compute_held(server) -> threading.Event:
    """Occupies the server's one compute thread until the event is set, so work queues behind it."""
    release, started = threading.Event(), threading.Event()
    server.running.executors[0].submit(lambda: (started.set(), release.wait(WAIT_S)))
    assert started.wait(30)
    return release


@pytest.fixture
def served(make_server, snapshot_dir, trained):
    # max_batch_tokens at its floor: the follower scores the two segments as two batches, so a Score
    # can reach the compute thread between them.
    server = make_server(snapshot_dir, max_batch_tokens=64, ewma_enabled=False)
    with LogitClient(server.address, timeout_s=WAIT_S) as client:
        client.publish(0, trained.states[0], snapshot_dir, model_config=trained.config)
    return server


def _segments_scored_alone(client: LogitClient, tokens: np.ndarray) -> np.ndarray:
    """Each segment over its own prefix, under sample ids nothing was kept for: the snapshot strategy."""
    result = client.score([_segment(tokens, s, e, f"alone-{i}") for i, (s, e) in enumerate(SEGMENTS)])
    return np.concatenate([seq.logprobs[s:e] for seq, (s, e) in zip(result.sequences, SEGMENTS)])


def test_a_trajectory_scored_while_its_segments_are_pending_gets_the_segments_bits(served, trained):
    running = served.running
    with LogitClient(served.address, timeout_s=WAIT_S) as client, ThreadPoolExecutor(1) as pool:
        release = _compute_held(served)
        try:
            for start, end in SEGMENTS:  # pushed as generated: one interruption, then the rest
                client.submit_segments([_segment(t, start, end, f"traj-{i}") for i, t in enumerate(TRAJECTORIES)])
            trajectories = [SequenceInput(t, spans=((0, 8, 56),), sample_id=f"traj-{i}") for i, t in enumerate(TRAJECTORIES)]
            answer = pool.submit(client.score, trajectories)
            # The Score is in the server: queued for the compute thread, or waiting for the follower.
            _wait_for(lambda: running.batcher.queued >= 1 or running.follower.waiting_scores >= 1, "the Score to arrive")
        finally:
            release.set()
        sequences = answer.result(timeout=WAIT_S).sequences
        alone = [_segments_scored_alone(client, t) for t in TRAJECTORIES]

    for i, (tokens, seq) in enumerate(zip(TRAJECTORIES, sequences)):
        assert (seq.sources[8:56] == TokenSource.EXACT).all()
        np.testing.assert_allclose(seq.logprobs[8:56], trained.reference(0, tokens)[8:56], atol=2e-6, rtol=0)
        assert np.array_equal(seq.logprobs[8:56], alone[i]), f"trajectory {i}: not the bits of its segments scored one by one"


def test_a_score_waits_only_for_segments_of_its_own_samples(served):
    running = served.running
    with LogitClient(served.address, timeout_s=WAIT_S) as client, ThreadPoolExecutor(1) as pool:
        release = _compute_held(served)
        try:
            client.submit_segments([_segment(TRAJECTORIES[0], 8, 14, "traj-0")])
            other = pool.submit(client.score, [_segment(TRAJECTORIES[0], 8, 14, "another-sample")])
            _wait_for(lambda: running.batcher.queued >= 1, "the other sample's Score to queue for the model")
            assert running.follower.waiting_scores == 0
        finally:
            release.set()
        assert (other.result(timeout=WAIT_S).sequences[0].sources[8:14] == TokenSource.EXACT).all()


def test_submitted_segments_are_scored_on_the_compute_thread(served):
    """One thread runs every forward, so the follower's never run beside a Score's on the same model."""
    running = served.running
    with LogitClient(served.address, timeout_s=WAIT_S) as client:
        client.score([_segment(TRAJECTORIES[0], 8, 14, "warm-up")])  # builds the model
        threads: list[str] = []
        hook = running.engine.backend.model.model.layers[0].register_forward_pre_hook(
            lambda _module, _args: threads.append(threading.current_thread().name)
        )
        try:
            client.submit_segments([_segment(t, 8, 14, f"thread-{i}") for i, t in enumerate(TRAJECTORIES[:2])])
            client.barrier(0)
        finally:
            hook.remove()
    assert threads and all(name.startswith("logit-compute") for name in threads), threads


def test_pending_segments_up_to_the_token_limit_are_accepted_and_one_token_more_is_refused(make_server, snapshot_dir, trained):
    server = make_server(snapshot_dir, max_pending_tokens=56, ewma_enabled=False)
    with LogitClient(server.address, timeout_s=WAIT_S, max_retries=0) as client:
        client.publish(0, trained.states[0], snapshot_dir, model_config=trained.config)
        release = _compute_held(server)  # nothing pending is scored meanwhile
        try:
            client.submit_segments([_segment(TRAJECTORIES[0], 8, 56, "full")])  # 56 tokens held: the limit
            with pytest.raises(errors.Overloaded) as caught:
                client.submit_segments([_segment(TRAJECTORIES[1], 8, 14, "over")])
        finally:
            release.set()
        client.barrier(0)
    assert caught.value.metadata == {"limit": "max_pending_tokens", "limit_value": "56", "value": "70"}


def test_a_score_without_a_deadline_waits_for_its_samples_segments(served):
    """gRPC calls may come without a deadline (grpcurl, other clients): the wait then has no bound."""
    running = served.running
    tokens = TRAJECTORIES[2]
    request = pb.ScoreRequest(
        sequences=[pb.Sequence(
            sample_id="no-deadline", token_ids=tokens.astype("<i4").tobytes(),
            spans=[pb.VersionSpan(policy_version=0, start=8, end=56)],
        )],
        temperature=1.0,
    )  # fmt: skip
    with LogitClient(served.address, timeout_s=WAIT_S) as client, grpc.insecure_channel(served.address) as channel:
        stub = logit_service_pb2_grpc.LogitServiceStub(channel)
        with ThreadPoolExecutor(1) as pool:
            release = _compute_held(served)
            try:
                client.submit_segments([_segment(tokens, s, e, "no-deadline") for s, e in SEGMENTS])
                answer = pool.submit(stub.Score, request)  # no timeout: no deadline reaches the server
                _wait_for(lambda: running.follower.waiting_scores >= 1 or answer.done(), "the Score to wait")
            finally:
                release.set()
            response = answer.result(timeout=WAIT_S)
    sources = np.frombuffer(response.results[0].sources, np.uint8)
    assert (sources == TokenSource.EXACT).all() and sources.size == 48

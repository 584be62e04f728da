"""SIGTERM during a long call: the call is cut at the grace period, the engine stops between layers,
and the process exits. The bound checked is a correctness bound (the call alone would run for
minutes), not a performance figure. An in-process server's stop gives calls in flight the grace its
config names, as the command-line server does."""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import grpc
import pytest

from logit_client import LogitClient, SequenceInput
from logit_service import errors
from logit_service.v1 import logit_service_pb2 as pb
from logit_service.v1 import logit_service_pb2_grpc as pb_grpc
from tests.helpers import ForwardGate, random_tokens, wait_for
from tests.server_process import ServerProcess

SEQUENCES, LENGTH = 240, 4096  # ~1M tokens: far longer than the grace period, even on a fast machine
EXIT_BOUND_S = 30.0


def test_sigterm_during_a_long_call_exits_within_the_grace_period(snapshot_dir, trained):
    trained.write(snapshot_dir, 0)
    server = ServerProcess(snapshot_dir, "--grace-s", "1", "--max-tokens-per-request", str(SEQUENCES * LENGTH)).start()
    request = pb.ScoreRequest(
        sequences=[
            pb.Sequence(
                token_ids=random_tokens(LENGTH, seed=i).astype("<i4").tobytes(),
                spans=[pb.VersionSpan(policy_version=0, start=1, end=LENGTH)],
            )
            for i in range(SEQUENCES)
        ]
    )
    outcome: list[object] = []
    channel = grpc.insecure_channel(server.address)
    warm_up = pb.ScoreRequest(sequences=[pb.Sequence(token_ids=request.sequences[0].token_ids[:64], spans=[pb.VersionSpan(policy_version=0, start=1, end=16)])])
    pb_grpc.LogitServiceStub(channel).Score(warm_up, timeout=120)  # the model is built: only the forward is left to stop

    def call() -> None:
        try:
            outcome.append(pb_grpc.LogitServiceStub(channel).Score(request, timeout=600))
        except grpc.RpcError as e:
            outcome.append(e.code())

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(3.0)  # let the call reach the model
    assert not outcome, "the long call finished before the test could interrupt it"
    process = server.process
    process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    try:
        code = process.wait(timeout=EXIT_BOUND_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"the server was still running {EXIT_BOUND_S} s after SIGTERM with --grace-s 1") from None
    finally:
        server.process = None
        caller.join(60)
        channel.close()
    print(f"\nexited {time.monotonic() - signalled:.2f} s after SIGTERM (grace 1 s), status {code}")
    assert code == 0
    assert outcome and isinstance(outcome[0], grpc.StatusCode), "the long call was answered instead of cut"


WAIT_S = 120  # bound on every wait for a condition; never reached when the code works
STILL_RUNNING_S = 2.0  # how long the held call still runs once stop has begun: past any short default grace


def _held_call_during_stop(server, snapshot_dir, trained, release_after_s: float | None):
    """A call held in its forward while `server.stop()` runs; the gate opens `release_after_s` after new
    calls are refused (stop has reached gRPC's own stop), or never while the call is still waiting (None).
    Returns the held call's outcome: its result, or the error it ended with."""
    sequence = [SequenceInput(random_tokens(16, seed=1), spans=((0, 1, 16),))]
    with LogitClient(server.address, timeout_s=WAIT_S, max_retries=0) as client:
        client.publish(0, trained.states[0], snapshot_dir, model_config=trained.config)
        client.score(sequence)  # the model is built: the held call waits only in its forward
    gate = ForwardGate(server)
    outcome: list[object] = []

    def call() -> None:
        try:
            with LogitClient(server.address, timeout_s=WAIT_S, max_retries=0) as client:
                outcome.append(client.score(sequence))
        except errors.LogitServiceError as e:
            outcome.append(e)

    def refused() -> bool:
        with grpc.insecure_channel(server.address) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=1)
            except grpc.FutureTimeoutError:
                return True
            try:
                pb_grpc.LogitServiceStub(channel).ListVersions(pb.ListVersionsRequest(), timeout=5)
            except grpc.RpcError as e:
                return e.code() == grpc.StatusCode.UNAVAILABLE
            return False

    caller = threading.Thread(target=call)
    caller.start()
    stopper = threading.Thread(target=server.stop)
    try:
        assert gate.entered.wait(WAIT_S), "the call never reached the model"
        stopper.start()
        wait_for(refused, "the server to refuse new calls", timeout_s=WAIT_S)
        if release_after_s is None:
            caller.join(WAIT_S)
            assert outcome, "the held call was neither answered nor cut"
        else:
            time.sleep(release_after_s)  # the call's remaining work, not a wait for a condition
        gate.release.set()
        caller.join(WAIT_S)
        stopper.join(WAIT_S)
    finally:
        gate.remove()
    assert not stopper.is_alive() and not caller.is_alive()
    return outcome[0]


def test_an_in_process_stop_lets_a_call_finish_within_the_configured_grace(make_server, snapshot_dir, trained):
    server = make_server(snapshot_dir, grace_s=WAIT_S)
    outcome = _held_call_during_stop(server, snapshot_dir, trained, release_after_s=STILL_RUNNING_S)
    assert not isinstance(outcome, Exception), f"the call was cut within a grace of {WAIT_S} s: {outcome!r}"
    assert outcome.sequences[0].logprobs.shape == (16,)


def test_an_in_process_stop_with_no_grace_cuts_a_call_in_flight(make_server, snapshot_dir, trained):
    server = make_server(snapshot_dir, grace_s=0)
    outcome = _held_call_during_stop(server, snapshot_dir, trained, release_after_s=None)
    assert isinstance(outcome, errors.LogitServiceError), f"the call was answered with a grace of 0: {outcome!r}"


def test_work_still_queued_on_the_servers_threads_at_stop_is_dropped_not_run(make_server, snapshot_dir):
    # A publish queued behind another when the server stops (its caller already cut by the grace period)
    # would otherwise still verify a whole snapshot before the process could exit.
    server = make_server(snapshot_dir, grace_s=0)
    io = next(e for e in server.running.executors if e._thread_name_prefix == "logit-io")
    busy, release, ran = threading.Barrier(io._max_workers + 1), threading.Event(), []

    def hold() -> None:
        busy.wait(WAIT_S)
        release.wait(WAIT_S)

    held = [io.submit(hold) for _ in range(io._max_workers)]
    queued = io.submit(ran.append, "queued")
    busy.wait(WAIT_S)  # every I/O thread is held: the last job waits in the queue
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    try:
        wait_for(queued.cancelled, "the queued job to be dropped", timeout_s=30)
    finally:
        release.set()
        stopper.join(WAIT_S)
    assert not stopper.is_alive() and all(f.done() for f in held)
    assert ran == []

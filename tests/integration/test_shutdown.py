"""SIGTERM during a long call: the call is cut at the grace period, the engine stops between layers,
and the process exits. The bound checked is a correctness bound (the call alone would run for
minutes), not a performance figure."""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import grpc

from logit_service.v1 import logit_service_pb2 as pb
from logit_service.v1 import logit_service_pb2_grpc as pb_grpc
from tests.helpers import random_tokens
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

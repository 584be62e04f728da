"""The registry's redis-server is killed (SIGKILL) under client load and restarted empty on its port: a
`logit-service serve` process keeps answering the versions it has seen through the outage, rebuilds the
registry from the snapshot directory afterwards, and no call fails and no answer is wrong."""

from __future__ import annotations

import time

import numpy as np

from logit_client import LogitClient, SequenceInput
from logit_service import errors
from tests.helpers import random_tokens
from tests.redis_server import running_redis_server
from tests.scoring_load import ScoringLoad
from tests.server_process import ServerProcess

WAIT_S = 120


def _wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            if predicate():
                return
        except errors.LogitServiceError:
            pass  # still coming back
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)  # poll interval


def test_killing_and_restarting_redis_under_load_fails_no_call_and_serves_no_wrong_answer(snapshot_dir, trained):
    server = load = None
    with running_redis_server() as first:
        port = first.port
        try:
            server = ServerProcess(snapshot_dir, "--redis-url", first.url, "--heartbeat-s", "0.2").start(timeout_s=180)
            with LogitClient(server.address, timeout_s=120) as client:
                for version in range(2):
                    client.publish(version, trained.states[version], snapshot_dir, model_config=trained.config)
            load = ScoringLoad(trained, lambda worker: [server.address], timeout_s=120)
            load.start()
            load.wait_for_answers(10, timeout_s=WAIT_S)
            before_kill = len(load.answered)
            first.process.kill()  # no shutdown, no save: the registry's state is gone
            first.process.wait(30)
            load.wait_for_answers(before_kill + 10, timeout_s=WAIT_S)  # answered while Redis is down
            during_outage = len(load.answered)
            with running_redis_server(port=port):  # empty, on the same URL
                with LogitClient(server.address, timeout_s=120) as client:
                    _wait_for(lambda: client.list_versions().latest_version == 1, "re-registering the versions on disk")
                    load.wait_for_answers(during_outage + 10, timeout_s=WAIT_S)
                    # Publishing works again.
                    client.publish(2, trained.states[2], snapshot_dir, model_config=trained.config)
                    tokens = random_tokens(30, seed=5)
                    served = client.score([SequenceInput(tokens, spans=((2, 1, 30),))]).sequences[0].logprobs
                    np.testing.assert_allclose(served[1:], trained.reference(2, tokens)[1:], atol=1e-5, rtol=0)
                load.stop(join_s=150)
                after_restart = len(load.answered)
        finally:
            if load is not None:
                load.stop(join_s=150)
            if server is not None:
                server.stop()
    assert not load.failures, f"calls failed within their deadline while Redis was killed: {load.failures[:3]}"
    assert not load.wrong
    assert before_kill >= 10 and during_outage >= before_kill + 10 and after_restart >= during_outage + 10

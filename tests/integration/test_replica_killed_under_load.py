"""One of two replicas on a shared registry and snapshot directory is killed (SIGKILL) under client load:
the client's retries land on the survivor, no call fails within its deadline and no answer is wrong."""

from __future__ import annotations

from logit_client import LogitClient
from tests.scoring_load import ScoringLoad
from tests.server_process import ServerProcess


def test_killing_one_of_two_replicas_under_load_fails_no_call(snapshot_dir, trained, redis_url):
    shared = ("--redis-url", redis_url, "--redis-namespace", "replica-kill", "--heartbeat-s", "0.5")
    replicas = [ServerProcess(snapshot_dir, *shared).start(timeout_s=180) for _ in range(2)]
    with LogitClient(replicas[0].address, timeout_s=120) as client:
        for version in range(2):
            client.publish(version, trained.states[version], snapshot_dir, model_config=trained.config)
    # Both replicas as targets, the victim first for one worker and second for the other.
    addresses = [r.address for r in replicas]
    load = ScoringLoad(trained, lambda worker: addresses if worker == 0 else addresses[::-1], timeout_s=120)
    try:
        load.start()
        load.wait_for_answers(10, timeout_s=120)
        before = len(load.answered)
        replicas[0].process.kill()  # no drain, no deregistration
        replicas[0].process.wait(30)
        replicas[0].process = None
        load.wait_for_answers(before + 20, timeout_s=120)
    finally:
        load.stop(join_s=150)
        for replica in replicas:
            replica.stop()
    assert not load.failures, f"calls failed within their deadline after a replica was killed: {load.failures[:3]}"
    assert not load.wrong
    assert before >= 10 and len(load.answered) >= before + 20, "the load did not go on after the kill"

"""One of two replicas on a shared registry and snapshot directory is killed (SIGKILL) under client load:
the client's retries land on the survivor, no call fails within its deadline and no answer is wrong."""

from __future__ import annotations

import threading
import time

import numpy as np

from logit_client import LogitClient, SequenceInput
from tests.helpers import random_tokens
from tests.server_process import ServerProcess


def test_killing_one_of_two_replicas_under_load_fails_no_call(snapshot_dir, trained, redis_url):
    shared = ("--redis-url", redis_url, "--redis-namespace", "replica-kill", "--heartbeat-s", "0.5")
    replicas = [ServerProcess(snapshot_dir, *shared).start(timeout_s=180) for _ in range(2)]
    with LogitClient(replicas[0].address, timeout_s=120) as client:
        for version in range(2):
            client.publish(version, trained.states[version], snapshot_dir, model_config=trained.config)
    tokens = [random_tokens(40, seed=s) for s in range(4)]
    expected = {(v, i): trained.reference(v, t) for v in range(2) for i, t in enumerate(tokens)}
    stop = threading.Event()
    answered: list[int] = []
    failures: list[BaseException] = []
    wrong: list[tuple[int, int]] = []

    def load(worker: int) -> None:
        # Both replicas as targets, the victim first for one worker and second for the other.
        targets = [r.address for r in (replicas if worker == 0 else replicas[::-1])]
        with LogitClient(targets, timeout_s=120) as client:
            for n in range(10_000):  # bounded; ends when the test says so
                if stop.is_set():
                    return
                version, i = (worker + n) % 2, n % len(tokens)
                try:
                    seq = client.score([SequenceInput(tokens[i], spans=((version, 1, 40),))]).sequences[0]
                except BaseException as e:  # noqa: BLE001 - every failure is a finding
                    failures.append(e)
                    return
                if not np.allclose(seq.logprobs[1:], expected[(version, i)][1:], atol=1e-5, rtol=0):
                    wrong.append((version, i))
                answered.append(worker)

    workers = [threading.Thread(target=load, args=(w,)) for w in range(2)]
    try:
        for w in workers:
            w.start()
        deadline = time.monotonic() + 120
        while len(answered) < 10 and time.monotonic() < deadline and not failures:
            time.sleep(0.05)
        before = len(answered)
        replicas[0].process.kill()  # no drain, no deregistration
        replicas[0].process.wait(30)
        replicas[0].process = None
        deadline = time.monotonic() + 120
        while len(answered) < before + 20 and time.monotonic() < deadline and not failures:
            time.sleep(0.05)
    finally:
        stop.set()
        for w in workers:
            w.join(150)
        for replica in replicas:
            replica.stop()
    assert not failures, f"calls failed within their deadline after a replica was killed: {failures[:3]}"
    assert not wrong
    assert before >= 10 and len(answered) >= before + 20, "the load did not go on after the kill"

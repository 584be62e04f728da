"""A replica restarted under client load: no call fails within its deadline and no answer is wrong."""

from __future__ import annotations

import threading
import time

import numpy as np

from logit_client import LogitClient, SequenceInput
from tests.helpers import random_tokens
from tests.redis_server import free_port
from tests.server_process import ServerProcess


def test_default_client_rides_out_a_restart(snapshot_dir, trained):
    for version in range(2):
        trained.write(snapshot_dir, version)
    tokens = [random_tokens(40, seed=s) for s in range(4)]
    expected = {(v, i): trained.reference(v, t) for v in range(2) for i, t in enumerate(tokens)}
    port = free_port()
    stop = threading.Event()
    answered: list[int] = []
    failures: list[BaseException] = []
    wrong: list[tuple[int, int]] = []

    def load(worker: int) -> None:
        # Default retries; a deadline longer than a restart takes even on a loaded machine.
        with LogitClient(f"127.0.0.1:{port}", timeout_s=180) as client:
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

    server = ServerProcess(snapshot_dir, port=port).start(timeout_s=180)
    workers = [threading.Thread(target=load, args=(w,)) for w in range(2)]
    try:
        for w in workers:
            w.start()
        deadline = time.monotonic() + 180
        while len(answered) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        before = len(answered)
        server.stop()  # SIGTERM: in-flight calls finish, then the port closes
        server = ServerProcess(snapshot_dir, port=port).start(timeout_s=180)
        deadline = time.monotonic() + 180
        while len(answered) < before + 10 and time.monotonic() < deadline and not failures:
            time.sleep(0.05)
    finally:
        stop.set()
        for w in workers:
            w.join(200)
        server.stop()
    assert not failures, f"calls failed within their deadline across the restart: {failures[:3]}"
    assert not wrong
    assert before >= 10 and len(answered) >= before + 10, "the load did not continue after the restart"

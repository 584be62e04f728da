"""Client load for fault tests: workers score known sequences in a bounded loop and record every
answer, every wrong answer and every failed call, until told to stop."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from logit_client import LogitClient, SequenceInput
from tests.helpers import random_tokens


class ScoringLoad:
    def __init__(self, trained, targets_of: Callable[[int], Sequence[str]], *, timeout_s: float, workers: int = 2) -> None:
        self.tokens = [random_tokens(40, seed=s) for s in range(4)]
        self.expected = {(v, i): trained.reference(v, t) for v in range(2) for i, t in enumerate(self.tokens)}
        self.answered: list[int] = []
        self.failures: list[BaseException] = []
        self.wrong: list[tuple[int, int]] = []
        self._targets_of = targets_of
        self._timeout_s = timeout_s
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(w,)) for w in range(workers)]

    def _run(self, worker: int) -> None:
        with LogitClient(list(self._targets_of(worker)), timeout_s=self._timeout_s) as client:  # default retries
            for n in range(10_000):  # bounded; ends when the test says so
                if self._stop.is_set():
                    return
                version, i = (worker + n) % 2, n % len(self.tokens)
                try:
                    seq = client.score([SequenceInput(self.tokens[i], spans=((version, 1, 40),))]).sequences[0]
                except BaseException as e:  # noqa: BLE001 - every failure is a finding
                    self.failures.append(e)
                    return
                if not np.allclose(seq.logprobs[1:], self.expected[(version, i)][1:], atol=1e-5, rtol=0):
                    self.wrong.append((version, i))
                self.answered.append(worker)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def wait_for_answers(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.answered) < count and time.monotonic() < deadline and not self.failures:
            time.sleep(0.05)

    def stop(self, join_s: float) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(join_s)

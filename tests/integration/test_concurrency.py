"""Concurrent scoring while versions are published and evicted: every answer is exact for the version
and digest it names, or a clean FAILED_PRECONDITION; nothing else."""

from __future__ import annotations

import threading

import numpy as np

from logit_client import LogitClient, SequenceInput
from logit_service import errors
from tests.helpers import NUM_VERSIONS, random_tokens


def test_concurrent_scores_during_publication_and_eviction_stay_exact(make_server, snapshot_dir, trained):
    server = make_server(snapshot_dir, retention_window=2, cache_bytes=1 << 20)
    tokens = [random_tokens(24 + i, seed=40 + i) for i in range(4)]
    expected = {(v, i): trained.reference(v, t) for v in range(NUM_VERSIONS) for i, t in enumerate(tokens)}
    digests: dict[int, str] = {}
    outcomes: list[tuple[str, int, int, float | str]] = []
    unexpected: list[BaseException] = []  # anything else ends a worker; kept, so the test sees it
    lock = threading.Lock()
    client = LogitClient(server.address, timeout_s=60)
    client.publish(0, trained.states[0], snapshot_dir, model_config=trained.config)
    digests[0] = client.get_version(0).digest
    stop = threading.Event()

    def scorer(worker: int) -> None:
        rng = np.random.default_rng(worker)
        try:
            _score_until_stopped(rng)
        except BaseException as e:
            with lock:
                unexpected.append(e)

    def _score_until_stopped(rng) -> None:
        with LogitClient(server.address, timeout_s=60) as own:
            while not stop.is_set():
                v, i = int(rng.integers(0, NUM_VERSIONS)), int(rng.integers(0, len(tokens)))
                try:
                    seq = own.score([SequenceInput(tokens[i], spans=((v, 1, len(tokens[i])),))]).sequences[0]
                except (errors.VersionOutsideWindow, errors.VersionNotFound) as e:
                    with lock:
                        outcomes.append((type(e).__name__, v, i, ""))
                    continue
                error = float(np.abs(seq.logprobs[1:] - expected[(v, i)][1:]).max())
                with lock:
                    outcomes.append(("ok", v, i, error))
                    outcomes.append(("digest", v, i, seq.spans[0].snapshot_digest))

    workers = [threading.Thread(target=scorer, args=(w,)) for w in range(3)]
    for w in workers:
        w.start()
    for version in range(1, NUM_VERSIONS):
        client.publish(version, trained.states[version], snapshot_dir, model_config=trained.config)
        digests[version] = client.get_version(version).digest
    for _ in range(20):  # a few more rounds against the final window
        client.score([SequenceInput(tokens[0], spans=((NUM_VERSIONS - 1, 1, len(tokens[0])),))])
    stop.set()
    for w in workers:
        w.join(timeout=60)
    client.close()

    assert not unexpected, f"a scoring worker failed: {unexpected!r}"
    assert not any(w.is_alive() for w in workers)
    answered = [o for o in outcomes if o[0] == "ok"]
    assert len(answered) >= 10, f"too few answers to mean anything: {len(outcomes)} outcomes"
    assert max(o[3] for o in answered) <= 2e-6
    for kind, v, _, digest in outcomes:
        if kind == "digest":
            assert digest == digests[v]
    assert {o[0] for o in outcomes} <= {"ok", "digest", "VersionOutsideWindow", "VersionNotFound"}

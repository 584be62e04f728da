"""A server killed with SIGKILL while a PublishVersion is in flight (hashing, building and probing the
model): after a restart on the same directory the version is either servable exactly or absent and
publishable again. Never half registered, never served wrong. Where the kill lands does not matter:
every outcome must leave that state."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from logit_client import LogitClient, SequenceInput
from logit_service import errors
from logit_service.demo.tiny_model import build_tiny_model, reference_logprobs
from logit_service.snapshots.writer import write_snapshot
from tests.server_process import ServerProcess

VOCAB = 32_000  # ~65 MB of weights: the publish takes long enough to be cut


@pytest.mark.parametrize("delay_s", [0.05, 0.5])
def test_a_kill_during_publish_leaves_the_version_whole_or_absent(snapshot_dir, delay_s):
    model = build_tiny_model(seed=3, vocab_size=VOCAB, hidden_size=256, layers=1)
    path = write_snapshot(snapshot_dir, 0, model.state_dict(), model.config.to_dict())
    tokens = np.random.default_rng(0).integers(0, VOCAB, size=32)
    expected = reference_logprobs(model, tokens).numpy()

    server = ServerProcess(snapshot_dir, "--scan-interval-s", "3600").start(timeout_s=180)
    outcome: list[object] = []

    def publish() -> None:
        try:
            with LogitClient(server.address, timeout_s=60, max_retries=0) as client:
                outcome.append(client.publish_version(0, path.name))
        except errors.LogitServiceError as e:
            outcome.append(e)

    caller = threading.Thread(target=publish)
    caller.start()
    time.sleep(delay_s)
    server.process.kill()
    server.process.wait(30)
    server.process = None
    caller.join(90)

    restarted = ServerProcess(snapshot_dir).start(timeout_s=180)
    try:
        with LogitClient(restarted.address, timeout_s=120) as client:
            # The start-up scan finds the snapshot whether or not the killed publish registered it;
            # publishing it again is then idempotent.
            assert [v.policy_version for v in client.list_versions().versions] == [0]
            assert client.publish_version(0, path.name).policy_version == 0
            seq = client.score([SequenceInput(tokens, spans=((0, 1, len(tokens)),))]).sequences[0]
    finally:
        restarted.stop()
    np.testing.assert_allclose(seq.logprobs[1:], expected[1:], atol=1e-5, rtol=0)

"""The paper's other two exact strategies: a dedicated old-logit model that follows the version stream
(segments pushed as generated, scored while their version is current) and a barrier at partial-rollout
interruption. Both answer exactly for versions that have since left the retention window."""

from __future__ import annotations

import numpy as np
import pytest

from logit_client import LogitClient, SequenceInput, TokenSource
from logit_service import errors
from tests.helpers import random_tokens

TRAJECTORY = random_tokens(40, seed=31)  # prompt [0, 8), then segments generated under several versions


def _segment(start: int, end: int, version: int, sample_id: str = "traj-1", tokens=TRAJECTORY) -> SequenceInput:
    return SequenceInput(tokens[:end], spans=((version, start, end),), sample_id=sample_id)


@pytest.fixture
def server_client(make_server, snapshot_dir):
    def start(**overrides):
        server = make_server(snapshot_dir, **overrides)
        return server, LogitClient(server.address, timeout_s=60)

    return start


def _publish(client, trained, snapshot_dir, version):
    client.publish(version, trained.states[version], snapshot_dir, model_config=trained.config)


def test_dedicated_model_answers_exactly_after_the_versions_left_the_window(server_client, snapshot_dir, trained):
    _, client = server_client(retention_window=2)
    _publish(client, trained, snapshot_dir, 0)
    client.submit_segments([_segment(8, 20, 0)])  # generated under v0, pushed at once
    _publish(client, trained, snapshot_dir, 1)
    client.submit_segments([_segment(20, 32, 1)])  # the rollout resumed under v1
    digests = [client.get_version(0).digest, client.get_version(1).digest]
    assert client.barrier(1) == 0
    for version in (2, 3):
        _publish(client, trained, snapshot_dir, version)  # versions 0 and 1 are now evicted

    result = client.score([SequenceInput(TRAJECTORY[:32], spans=((0, 8, 20), (1, 20, 32)), sample_id="traj-1")])
    seq = result.sequences[0]
    assert (seq.sources[8:32] == TokenSource.EXACT).all()
    np.testing.assert_allclose(seq.logprobs[8:20], trained.reference(0, TRAJECTORY)[8:20], atol=2e-6, rtol=0)
    np.testing.assert_allclose(seq.logprobs[20:32], trained.reference(1, TRAJECTORY)[20:32], atol=2e-6, rtol=0)
    assert [s.served_version for s in seq.spans] == [0, 1]
    assert [s.snapshot_digest for s in seq.spans] == digests  # the weights that computed each kept answer
    with pytest.raises(errors.VersionOutsideWindow):  # nothing kept for another sample: the window rules
        client.score([SequenceInput(TRAJECTORY[:32], spans=((0, 8, 20),), sample_id="traj-2")])


def test_barrier_at_interruption_keeps_only_the_current_version(server_client, snapshot_dir, trained):
    _, client = server_client(retention_window=1)
    _publish(client, trained, snapshot_dir, 0)
    client.submit_segments([_segment(8, 14, 0), _segment(14, 20, 0)])  # two interruptions' worth
    assert client.barrier(0) == 0  # the rollout side waits here before switching to v1
    _publish(client, trained, snapshot_dir, 1)  # K=1: version 0 is evicted at once
    seq = client.score([SequenceInput(TRAJECTORY[:20], spans=((0, 8, 20),), sample_id="traj-1")]).sequences[0]
    np.testing.assert_allclose(seq.logprobs[8:20], trained.reference(0, TRAJECTORY)[8:20], atol=2e-6, rtol=0)
    with pytest.raises(errors.VersionOutsideWindow):  # a span the kept segments do not tile exactly
        client.score([SequenceInput(TRAJECTORY[:22], spans=((0, 8, 22),), sample_id="traj-1")])


def test_kept_answers_are_never_reused_for_other_tokens(server_client, snapshot_dir, trained):
    _, client = server_client(retention_window=1)
    _publish(client, trained, snapshot_dir, 0)
    client.submit_segments([_segment(8, 20, 0)])
    client.barrier(0)
    _publish(client, trained, snapshot_dir, 1)
    changed = TRAJECTORY.copy()
    changed[3] = (changed[3] + 1) % 256  # a different prompt token changes every later log-prob
    with pytest.raises(errors.VersionOutsideWindow):
        client.score([SequenceInput(changed[:20], spans=((0, 8, 20),), sample_id="traj-1")])
    last = TRAJECTORY.copy()
    last[19] = (last[19] + 1) % 256  # the span's last token: only its own log-prob differs
    with pytest.raises(errors.VersionOutsideWindow):
        client.score([SequenceInput(last[:20], spans=((0, 8, 20),), sample_id="traj-1")])
    with pytest.raises(errors.VersionOutsideWindow):  # nor for another temperature
        client.score([SequenceInput(TRAJECTORY[:20], spans=((0, 8, 20),), sample_id="traj-1")], temperature=0.5)


def test_segments_that_cannot_be_scored_are_refused_at_submit(server_client, snapshot_dir, trained):
    _, client = server_client()
    _publish(client, trained, snapshot_dir, 0)
    with pytest.raises(errors.VersionNotFound):  # v5 was never published: refused, as Score would
        client.submit_segments([_segment(8, 20, 5), _segment(8, 20, 0, sample_id="ok")])
    assert client.barrier(5) == 0  # all or nothing: neither segment is pending
    client.submit_segments([_segment(8, 20, 0, sample_id="ok")])
    assert client.barrier(0) == 0
    ok = client.score([SequenceInput(TRAJECTORY[:20], spans=((0, 8, 20),), sample_id="ok")]).sequences[0]
    np.testing.assert_allclose(ok.logprobs[8:20], trained.reference(0, TRAJECTORY)[8:20], atol=2e-6, rtol=0)


def test_pending_work_is_bounded(server_client, snapshot_dir, trained):
    _, client = server_client(max_pending_tokens=10)
    _publish(client, trained, snapshot_dir, 0)
    with pytest.raises(errors.Overloaded, match="limit of 10"):
        client.submit_segments([_segment(8, 20, 0)], timeout_s=1)
    with pytest.raises(ValueError):
        client.submit_segments([SequenceInput(TRAJECTORY[:20], spans=((0, 0, 20),))])

"""Compact snapshots through a real server: exact answers from deltas, DATA_LOSS for a damaged one."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from logit_client import LogitClient, SequenceInput

from logit_service import errors
from logit_service.cli import _add_config_flags, config_from_args
from tests.helpers import random_tokens

TOKENS = random_tokens(24, seed=5)


@pytest.fixture
def compact_served(make_server, snapshot_dir, trained):
    """Versions 0..3 published to a server storing compact snapshots (no keyframe but 0), no RAM cache."""
    server = make_server(snapshot_dir, cache_bytes=0, ewma_enabled=False, compact_snapshots=True, compact_keyframe_interval=100)
    client = LogitClient(server.address, timeout_s=60, max_retries=0)
    for v in range(4):
        client.publish(v, trained.states[v], snapshot_dir, model_config=trained.config)
    assert server.running.store.compactor.wait_idle(120)
    yield server, client
    client.close()


def _score(client, version):
    return client.score([SequenceInput(TOKENS, spans=((version, 1, len(TOKENS)),))]).sequences[0]


def test_compact_versions_answer_exactly_what_the_full_ones_do(compact_served, trained, snapshot_dir):
    _, client = compact_served
    assert sorted(p.parent.name for p in snapshot_dir.glob("v*/model.safetensors.zdelta")) == ["v00000001", "v00000002"]
    for v in range(4):
        seq = _score(client, v)
        np.testing.assert_allclose(seq.logprobs[1:], trained.reference(v, TOKENS)[1:], atol=1e-5, rtol=0)
        assert (seq.served_versions[1:] == v).all()


def test_a_truncated_delta_answers_data_loss_and_the_server_keeps_serving(compact_served, snapshot_dir, trained):
    _, client = compact_served
    before = _score(client, 2).logprobs
    _score(client, 3)  # so that 2 is no longer the resident version: its next Score reads the disk
    delta = snapshot_dir / "v00000002" / "model.safetensors.zdelta"
    delta.write_bytes(delta.read_bytes()[: delta.stat().st_size // 2])
    for v in (2, 1):  # 1 is a delta from 2
        with pytest.raises(errors.SnapshotCorrupt, match="v00000002/model.safetensors.zdelta"):
            _score(client, v)
    for v in (0, 3):  # their chains do not pass through the damage
        np.testing.assert_allclose(_score(client, v).logprobs[1:], trained.reference(v, TOKENS)[1:], atol=1e-5, rtol=0)
    np.testing.assert_allclose(before[1:], trained.reference(2, TOKENS)[1:], atol=1e-5, rtol=0)


def test_the_flags_turn_compaction_on(tmp_path):
    parser = argparse.ArgumentParser()
    _add_config_flags(parser)
    config = config_from_args(parser.parse_args(["--snapshot-dir", str(tmp_path), "--compact-snapshots",
                                                 "--compact-keyframe-interval", "4"]))  # fmt: skip
    assert config.compact_snapshots and config.compact_keyframe_interval == 4

"""Weights written as several shard files: served exactly, bit for bit as from one file, full and compact."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from logit_client import LogitClient, SequenceInput

from logit_service import errors
from logit_service.snapshots.loader import load_verified_weights
from logit_service.snapshots.manifest import read_manifest
from logit_service.snapshots.writer import INDEX_NAME, WEIGHTS_NAME, shard_tensors, write_snapshot
from tests.helpers import random_tokens

TOKENS = random_tokens(40, seed=11)


def _weights_bytes(state: dict) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def _shard_limit(trained) -> int:
    return _weights_bytes(trained.states[0]) // 3  # at least three shards


def _publish(client, root, version, state, config, **write) -> None:
    path = write_snapshot(root, version, state, config, **write)
    client.publish_version(version, path.name, expected_digest=read_manifest(path).digest)


def _score(client, version):
    return client.score([SequenceInput(TOKENS, spans=((version, 1, len(TOKENS)),))]).sequences[0]


def test_shards_hold_every_tensor_once_with_an_index_transformers_reads(tmp_path, trained):
    path = write_snapshot(tmp_path, 0, trained.states[0], trained.config, max_shard_bytes=_shard_limit(trained))
    manifest = read_manifest(path)
    shards = sorted(n for n in manifest.files if n.endswith(".safetensors"))
    assert len(shards) >= 3 and WEIGHTS_NAME not in manifest.files
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((path / INDEX_NAME).read_text())
    assert INDEX_NAME in manifest.files  # covered by the digest like every other file
    assert sorted(index["weight_map"]) == sorted(trained.states[0]) and set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == _weights_bytes(trained.states[0])
    loaded = load_verified_weights(path, manifest)
    assert loaded.keys() == trained.states[0].keys()
    for name, tensor in trained.states[0].items():
        assert torch.equal(loaded[name], tensor), name
    # The HF layout an engine reads: transformers loads the sharded directory by its index.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, trained.states[0][name]), name


def test_small_weights_stay_one_file_and_shards_pair_between_versions(trained):
    assert list(shard_tensors(trained.states[0], None)) == [WEIGHTS_NAME]
    assert list(shard_tensors(trained.states[0], _weights_bytes(trained.states[0]))) == [WEIGHTS_NAME]
    limit = _shard_limit(trained)
    first, second = shard_tensors(trained.states[0], limit), shard_tensors(trained.states[1], limit)
    assert {f: list(g) for f, g in first.items()} == {f: list(g) for f, g in second.items()}
    one_tensor = shard_tensors(trained.states[0], 1)  # every tensor over the limit: a file each
    assert len(one_tensor) == len(trained.states[0]) and all(len(g) == 1 for g in one_tensor.values())


@pytest.mark.parametrize("compact", [False, True])
def test_sharded_versions_answer_bit_for_bit_what_one_file_does(make_server, tmp_path, trained, compact):
    settings = dict(cache_bytes=0, ewma_enabled=False, compact_snapshots=compact, compact_keyframe_interval=100)
    sharded_dir, whole_dir = tmp_path / "sharded", tmp_path / "whole"
    sharded = make_server(sharded_dir, **settings)
    whole = make_server(whole_dir, **settings)
    with LogitClient(sharded.address, timeout_s=60, max_retries=0) as a, LogitClient(whole.address, timeout_s=60, max_retries=0) as b:
        for v in range(4):
            _publish(a, sharded_dir, v, trained.states[v], trained.config, max_shard_bytes=_shard_limit(trained))
            _publish(b, whole_dir, v, trained.states[v], trained.config, max_shard_bytes=None)
        if compact:
            assert sharded.running.store.compactor.wait_idle(120)
            deltas = sorted(p.name for p in (sharded_dir / "v00000001").iterdir() if p.name.endswith(".zdelta"))
            assert len(deltas) >= 3  # each shard a difference from the same shard of its neighbour
        for v in (3, 1, 0, 2):  # not in publishing order: loads from disk, through the chains
            ours, theirs = _score(a, v), _score(b, v)
            assert ours.logprobs[1:].tobytes() == theirs.logprobs[1:].tobytes()
            np.testing.assert_allclose(ours.logprobs[1:], trained.reference(v, TOKENS)[1:], atol=2e-6, rtol=0)
            assert (ours.served_versions[1:] == v).all()


def test_a_tensor_in_two_shards_is_refused(tmp_path, trained):
    from safetensors.torch import save_file

    from logit_service.snapshots.manifest import Manifest, file_sha256

    path = write_snapshot(tmp_path, 0, trained.states[0], trained.config, max_shard_bytes=_shard_limit(trained))
    manifest = read_manifest(path)
    shards = sorted(n for n in manifest.files if n.endswith(".safetensors"))
    # The last shard also carries the first tensor, and the manifest vouches for both files.
    name, tensor = next(iter(trained.states[0].items()))
    weight_map = json.loads((path / INDEX_NAME).read_text())["weight_map"]
    last = {k: trained.states[0][k].clone() for k, file in weight_map.items() if file == shards[-1]}
    assert name not in last
    save_file({**last, name: tensor.clone()}, str(path / shards[-1]), metadata={"format": "pt"})
    files = dict(manifest.files, **{shards[-1]: file_sha256(path / shards[-1])})
    forged = Manifest(**{**manifest.__dict__, "files": files})
    with pytest.raises(errors.SnapshotCorrupt, match=f"holds tensor {name!r}, which another weights file"):
        load_verified_weights(path, forged)

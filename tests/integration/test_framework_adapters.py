"""The verl and AReaL adapters on batches laid out as those frameworks build them, scored by a real service.

What the adapters write must equal what the framework's own forward computes under the version that
generated each token: verl's actor on the padded batch (position_ids and all), AReaL's `compute_logp`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from logit_client import LogitClient, TokenSource
from logit_client.integrations.areal import build_areal_batch, score_areal_batch
from logit_client.integrations.verl import build_verl_batch, score_verl_batch, versions_from_param_versions
from tests.framework_layouts import (
    areal_compute_logp,
    areal_concat_padded_tensors,
    areal_episode,
    areal_pack_tensor_dict,
    verl_actor_log_probs,
    verl_data_proto,
    word_tokenizer,
)
from tests.helpers import VOCAB, random_tokens

VERSIONS = (1, 2, 3)
TEMPERATURE = 0.9


@pytest.fixture
def client(make_server, snapshot_dir, trained):
    server = make_server(snapshot_dir, retention_window=len(VERSIONS))
    with LogitClient(server.address, timeout_s=60) as client:
        for version in VERSIONS:
            client.publish(version, trained.states[version], snapshot_dir, model_config=trained.config)
        yield client


def _tokens(n: int, seed: int) -> list[int]:
    return random_tokens(n, seed).tolist()


# --- verl -------------------------------------------------------------------------------------------


def _verl_samples():
    """Four samples: one version; a switch mid-response; tool output inside the response; a one-token reply."""
    prompts = [_tokens(5, 1), _tokens(9, 2), _tokens(3, 3), _tokens(12, 4)]
    responses = [_tokens(10, 5), _tokens(16, 6), _tokens(13, 7), _tokens(1, 8)]
    masks = [[1] * 10, [1] * 16, [1] * 4 + [0] * 5 + [1] * 4, [1]]
    token_versions = [[1] * 10, [1] * 7 + [2] * 9, [3] * 13, [2]]
    return prompts, responses, masks, token_versions


def _verl_version_grid(token_versions, response_length: int) -> torch.Tensor:
    grid = torch.full((len(token_versions), response_length), -1, dtype=torch.long)
    for row, tags in enumerate(token_versions):
        grid[row, : len(tags)] = torch.tensor(tags)
    return grid


def test_verl_old_log_probs_equal_verl_actor_forward_of_each_tokens_version(client, trained):
    prompts, responses, masks, token_versions = _verl_samples()
    data = verl_data_proto(
        word_tokenizer(VOCAB), prompts, responses, masks, prompt_length=12, response_length=16,
        temperature=TEMPERATURE, param_version_start=[1, 1, 3, 2], param_version_end=[1, 2, 3, 2],
    )  # fmt: skip
    grid = _verl_version_grid(token_versions, 16)
    answer = score_verl_batch(client, data, grid)  # temperature read from meta_info, as verl's actor does

    old = data.batch["old_log_probs"]
    assert old.shape == (4, 16) and old.dtype == torch.float32
    response_mask = data.batch["response_mask"].bool()
    # What verl's own actor computes on this padded batch, under each version.
    by_version = {v: verl_actor_log_probs(trained.model_at(v), data.batch, TEMPERATURE) for v in VERSIONS}
    expected = torch.zeros_like(old)
    for v, logprobs in by_version.items():
        expected = torch.where(grid == v, logprobs, expected)
    error = (old - expected)[response_mask].abs().max().item()
    print(f"\nverl adapter vs verl's actor forward (padded, position_ids): max |error| {error:.2e}")
    assert error <= 1e-5
    assert (old[~response_mask] == 0).all()  # tool output and padding are not scored
    assert (answer.sources[response_mask.numpy()] == TokenSource.EXACT).all()
    assert np.array_equal(answer.served_versions[response_mask.numpy()], grid[response_mask].numpy())
    # The switch mid-response matters: scoring sample 1 wholly under version 1 would be wrong.
    assert (by_version[1][1, 7:16] - old[1, 7:16]).abs().max().item() > 1e-3


def test_verl_per_sample_versions_come_from_param_versions_and_a_crossed_sample_is_refused(client, trained):
    prompts, responses, masks, _ = _verl_samples()
    data = verl_data_proto(
        word_tokenizer(VOCAB), prompts, responses, masks, prompt_length=12, response_length=16,
        temperature=1.0, param_version_start=[1, 2, 3, 2], param_version_end=[1, 2, 3, 2],
    )  # fmt: skip
    per_sample = versions_from_param_versions(
        data.non_tensor_batch["param_version_start"], data.non_tensor_batch["param_version_end"]
    )
    assert per_sample.tolist() == [1, 2, 3, 2]
    score_verl_batch(client, data, per_sample)
    response_mask = data.batch["response_mask"].bool()
    for row, version in enumerate(per_sample.tolist()):
        expected = verl_actor_log_probs(trained.model_at(version), data.batch, 1.0)[row]
        assert (data.batch["old_log_probs"][row] - expected)[response_mask[row]].abs().max().item() <= 1e-5

    with pytest.raises(ValueError, match=r"samples \[1\] span versions"):
        versions_from_param_versions(np.array([1, 1], dtype=object), np.array([1, 2], dtype=object))


def test_verl_layout_errors_are_caught_before_any_call():
    prompts, responses, masks, _ = _verl_samples()
    data = verl_data_proto(
        word_tokenizer(VOCAB), prompts, responses, masks, prompt_length=12, response_length=16,
        temperature=1.0, param_version_start=[1] * 4, param_version_end=[1] * 4,
    )  # fmt: skip
    batch = build_verl_batch(data, 1)
    assert [len(s.token_ids) for s in batch.sequences] == [15, 25, 16, 13]  # padding stripped
    mask = data.batch["attention_mask"]
    right_padded_prompts = dict(data.batch, attention_mask=torch.cat([mask[:, :12].flip(1), mask[:, 12:]], dim=1))
    with pytest.raises(ValueError, match="left-padded"):
        build_verl_batch(right_padded_prompts, 1)
    with pytest.raises(ValueError, match="negative version"):
        build_verl_batch(data, torch.full((4, 16), -1))


# --- AReaL ------------------------------------------------------------------------------------------


def _areal_episodes():
    """Three samples: one version; versions switching twice inside the output; a tool turn (loss_mask 0, -1)."""
    return [
        areal_episode(_tokens(4, 11), _tokens(9, 12), [-1.0] * 9, [2] * 9),
        areal_episode(_tokens(7, 13), _tokens(14, 14), [-1.0] * 14, [1] * 5 + [2] * 5 + [3] * 4),
        areal_episode(_tokens(3, 15), _tokens(11, 16), [-1.0] * 11, [3] * 4 + [-1] * 3 + [3] * 4,
                      output_loss_mask=[1] * 4 + [0] * 3 + [1] * 4),
    ]  # fmt: skip


def _areal_expected(trained, data: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """AReaL's compute_logp per sequence, padded like its engine's output, picked per position by the version
    of the token it scores (token t + 1); and the rolled loss mask those positions are used under."""
    expected = torch.zeros(data["input_ids"].shape, dtype=torch.float32)
    lengths = data["attention_mask"].sum(-1)
    for row, n in enumerate(lengths.tolist()):
        ids = data["input_ids"][row, :n]
        next_versions = torch.roll(data["versions"][row, :n], shifts=-1)
        for version in VERSIONS:
            logp = areal_compute_logp(trained.model_at(version), ids, TEMPERATURE)
            expected[row, :n] = torch.where(next_versions == version, logp, expected[row, :n])
    return expected, torch.roll(data["loss_mask"], shifts=-1, dims=-1).bool()


def test_areal_padded_prox_logp_equals_compute_logp_under_each_tokens_version(client, trained):
    data = areal_concat_padded_tensors(_areal_episodes())
    assert (data["versions"][~data["attention_mask"]] == 0).all()  # AReaL pads versions with 0, not -1
    prox = score_areal_batch(client, data, temperature=TEMPERATURE)
    expected, rolled_mask = _areal_expected(trained, data)
    assert data["prox_logp"].shape == data["input_ids"].shape
    error = (data["prox_logp"] - expected)[rolled_mask].abs().max().item()
    print(f"\nAReaL adapter (padded) vs AReaL's compute_logp: max |error| {error:.2e}")
    assert error <= 1e-5
    assert (data["prox_logp"][~rolled_mask] == 0).all()
    assert np.array_equal(prox, data["prox_logp"].numpy())


def test_areal_packed_batch_gets_the_same_values_in_packed_positions(client, trained):
    padded = areal_concat_padded_tensors(_areal_episodes())
    expected, rolled_mask = _areal_expected(trained, padded)
    packed = areal_pack_tensor_dict(padded)
    score_areal_batch(client, packed, temperature=TEMPERATURE)
    assert packed["prox_logp"].shape == packed["input_ids"].shape
    flat_expected = areal_pack_tensor_dict({"attention_mask": padded["attention_mask"], "x": expected})["x"]
    flat_mask = areal_pack_tensor_dict({"attention_mask": padded["attention_mask"], "x": rolled_mask})["x"]
    # Rolling the packed loss mask carries sequence i+1's first position onto sequence i's last: never scored.
    error = (packed["prox_logp"] - flat_expected)[flat_mask].abs().max().item()
    assert error <= 1e-5
    assert (packed["prox_logp"][~flat_mask] == 0).all()


def test_areal_loss_mask_token_without_a_version_is_refused():
    episode = areal_episode(_tokens(4, 21), _tokens(3, 22), [-1.0] * 3, [2, -1, 2])
    with pytest.raises(ValueError, match="version -1"):
        build_areal_batch(areal_concat_padded_tensors([episode]))

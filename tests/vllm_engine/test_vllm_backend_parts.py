"""The vLLM backend's parts that need no engine, on vLLM's own types: the temperature rule, the config
it hands vLLM, the casts, how a request is cut into engine calls, and how a prompt log-prob is picked
out of what vLLM returns (both of its layouts).

A part wrong here gives a wrong number, or a sequence silently dropped from an engine call, with no
error: the engine tests (test_vllm_backend.py) would see it only where their sequences reach it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vllm.logprobs import FlatLogprobs, Logprob

from logit_service.backends.torch_backend import ScoreItem
from logit_service.backends.vllm_backend import (
    VllmBackend,
    _cast,
    _prompt_logprob_values,
    check_temperature,
    with_architectures,
)
from logit_service.errors import InvalidRequest


def test_temperature_one_is_served_and_any_other_refused_with_the_way_out():
    check_temperature(1.0)
    for temperature in (0.999, 1.001, 0.5, 2.0):
        with pytest.raises(InvalidRequest, match=f"temperature 1.0 only .*got {temperature}; run a replica with --backend torch"):
            check_temperature(temperature)


def test_a_config_without_architectures_gets_its_causal_lm_class():
    config = {"model_type": "qwen2", "vocab_size": 64}
    filled = with_architectures(config)
    assert filled["architectures"] == ["Qwen2ForCausalLM"]
    assert filled["vocab_size"] == 64
    assert "architectures" not in config  # the caller's dict is not changed
    assert with_architectures({"model_type": "llama", "architectures": []})["architectures"] == ["LlamaForCausalLM"]


def test_architectures_already_named_are_kept():
    config = {"model_type": "qwen2", "architectures": ["MyQwen2ForCausalLM"]}
    assert with_architectures(config)["architectures"] == ["MyQwen2ForCausalLM"]


def test_floating_tensors_take_the_engine_dtype_and_integer_ones_keep_theirs():
    floats = torch.tensor([1.5, -2.25], dtype=torch.float32)
    assert _cast(floats, "bfloat16").dtype == torch.bfloat16
    kept = _cast(floats, "float32")
    assert kept.dtype == torch.float32 and torch.equal(kept, floats)
    integers = torch.tensor([3, 4], dtype=torch.int64)
    assert _cast(integers, "bfloat16").dtype == torch.int64


def _items(lengths: list[int]) -> list[ScoreItem]:
    return [ScoreItem(np.arange(n, dtype=np.int64), np.arange(1, n)) for n in lengths]


@pytest.mark.parametrize(
    ("lengths", "budget", "chunks"),
    [
        ([5, 5, 5], 10, [[0, 1], [2]]),  # a chunk up to the budget exactly
        ([5, 6, 5], 10, [[0], [1], [2]]),
        ([12, 3], 10, [[0], [1]]),  # a sequence over the budget goes alone, never dropped
        ([3, 12], 10, [[0], [1]]),
        ([4], 10, [[0]]),
        ([], 10, []),
    ],
)
def test_a_request_is_cut_into_engine_calls_of_at_most_the_token_budget(lengths, budget, chunks):
    backend = VllmBackend(max_batch_tokens=budget)
    assert backend._chunks(_items(lengths)) == chunks


def test_every_backend_answers_that_another_callers_sequences_can_share_a_forward():
    assert VllmBackend().room_for_company([4096, 4096]) is True


def _position(entries: dict[int, float]) -> dict[int, Logprob]:
    return {token: Logprob(logprob=value, rank=rank) for rank, (token, value) in enumerate(entries.items(), 1)}


# Position 0 has no log-prob; at each later position vLLM returns the prompt token's own entry and
# possibly others (the top-k it was asked for, here other tokens), in any order.
_TOKENS = np.array([7, 3, 9, 3])
_POSITIONS = [None, {5: -0.5, 3: -1.25}, {9: -2.0}, {1: -0.1, 2: -0.2, 3: -3.5}]
_EXPECTED = np.array([np.nan, -1.25, -2.0, -3.5], dtype=np.float32)


def test_the_prompt_token_entry_is_picked_from_per_position_dicts():
    values = _prompt_logprob_values([None if p is None else _position(p) for p in _POSITIONS], _TOKENS)
    assert values.dtype == np.float32
    np.testing.assert_array_equal(values, _EXPECTED)


def test_the_prompt_token_entry_is_picked_from_flat_logprobs():
    flat = FlatLogprobs()
    for p in _POSITIONS:
        flat.append(None if p is None else _position(p))
    values = _prompt_logprob_values(flat, _TOKENS)
    assert values.dtype == np.float32
    np.testing.assert_array_equal(values, _EXPECTED)


def test_a_position_without_the_prompt_token_stays_nan_in_both_layouts():
    positions = [None, {5: -0.5}, {9: -2.0}]
    tokens = np.array([7, 3, 9])
    flat = FlatLogprobs()
    for p in positions:
        flat.append(None if p is None else _position(p))
    for layout in ([None if p is None else _position(p) for p in positions], flat):
        values = _prompt_logprob_values(layout, tokens)
        assert np.isnan(values[:2]).all() and values[2] == np.float32(-2.0)


def test_only_the_first_entry_of_a_token_counts_in_flat_logprobs():
    flat = FlatLogprobs()
    flat.append(None)
    flat.append_fast([3, 3], [-1.0, -9.0], iter([1, 2]), [None, None])
    assert _prompt_logprob_values(flat, np.array([0, 3]))[1] == np.float32(-1.0)


def test_a_backend_before_its_first_publish_holds_no_weights_and_counts_no_swaps():
    backend = VllmBackend()
    assert (backend.model, backend.resident_key, backend.resident_digest) == (None, None, None)
    assert (backend.swaps, backend.swap_seconds) == (0, 0.0)

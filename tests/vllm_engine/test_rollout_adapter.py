"""The rollout adapter on a real `vllm.LLM`: per-token versions across a switch, reload, digest checks."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from logit_client.rollout import Rollout, loss_inputs
from logit_client.vllm_rollout import VllmRollout
from logit_service.errors import SnapshotCorrupt
from tests.vllm_engine.helpers import ENGINE_KWARGS, VOCAB, shutdown

MAX_TOKENS = 24
SWITCH_AFTER = 8


@pytest.fixture(scope="module")
def adapter(versions):
    rollout = VllmRollout.from_snapshot(versions.path(0), engine_kwargs=ENGINE_KWARGS)
    yield rollout
    shutdown(rollout.llm)


def _prompts(seed: int, lengths=(5, 9, 13)) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, VOCAB, size=n).tolist() for n in lengths]


def _switch_to(path, after: int):
    def on_step(adapter, batch):
        if adapter.policy_version == 0 and min(r.num_generated for r in batch) >= after:
            adapter.request_version(path)

    return on_step


def _expected_mu(versions, rollout: Rollout, temperature: float) -> np.ndarray:
    """log μ of each generated token under the version stamped on it, from a direct forward."""
    ids, tags = rollout.all_token_ids, rollout.all_versions
    expected = np.full(len(ids), np.nan)
    for v in rollout.generated_versions:
        expected[tags == v] = versions.reference(v, ids, temperature)[tags == v]
    return expected[rollout.loss_mask]


@pytest.mark.parametrize("temperature", [pytest.param(1.0, id="T=1"), pytest.param(0.7, id="T=0.7")])
def test_a_mid_sequence_switch_stamps_each_token_with_the_version_that_sampled_it(adapter, versions, temperature):
    from vllm import SamplingParams

    adapter.load_version(versions.path(0))
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=temperature, seed=3)
    rollouts = adapter.generate(_prompts(1), params, on_step=_switch_to(versions.path(1), SWITCH_AFTER))
    assert adapter.policy_version == 1
    for rollout in rollouts:
        assert rollout.finished and rollout.num_generated == MAX_TOKENS
        assert rollout.interruptions == 1
        first_new = rollout.versions.index(1)
        assert first_new >= SWITCH_AFTER
        assert rollout.versions == [0] * first_new + [1] * (MAX_TOKENS - first_new)
        mu = np.asarray(rollout.behavior_logprobs, dtype=np.float64)
        np.testing.assert_allclose(mu, _expected_mu(versions, rollout, temperature), atol=1e-4, rtol=0)
        # The check can fail: the other version gives other log-probs for the tokens after the switch.
        other = versions.reference(0, rollout.all_token_ids, temperature)[rollout.loss_mask][first_new:]
        assert np.abs(mu[first_new:] - other).max() > 1e-3


def test_the_output_is_what_the_service_and_the_loss_take(adapter, versions):
    from vllm import SamplingParams

    adapter.load_version(versions.path(0))
    rollouts = adapter.generate(_prompts(2, (4, 7)), SamplingParams(max_tokens=12, seed=1),
                                on_step=_switch_to(versions.path(1), 5))
    for rollout in rollouts:
        seq = rollout.to_sequence_input()
        prompt = len(rollout.prompt_token_ids)
        k = rollout.versions.index(1)
        assert seq.spans == ((0, prompt, prompt + k), (1, prompt + k, prompt + 12))
        assert list(seq.token_ids) == rollout.prompt_token_ids + rollout.token_ids
    batch = loss_inputs(rollouts, width=24)
    assert batch["token_ids"].shape == batch["behavior_logprobs"].shape == (2, 24)
    assert batch["loss_mask"].sum() == 24 and not np.isnan(batch["behavior_logprobs"]).any()
    assert set(np.unique(batch["versions"])) == {-1, 0, 1}


def test_a_partial_rollout_resumes_later_with_its_prefix_and_tags(adapter, versions):
    from vllm import SamplingParams

    adapter.load_version(versions.path(0))
    first = adapter.generate(_prompts(3, (6,)), SamplingParams(max_tokens=5, seed=2))[0]
    assert first.finished and first.versions == [0] * 5
    first.finished = False  # hand it back for more tokens, as a partial rollout the trainer kept
    adapter.load_version(versions.path(1))
    resumed = adapter.generate([first], SamplingParams(max_tokens=15, seed=2))[0]
    assert resumed is first and resumed.num_generated == 15
    assert resumed.versions == [0] * 5 + [1] * 10
    np.testing.assert_allclose(resumed.behavior_logprobs, _expected_mu(versions, resumed, 1.0), atol=1e-4, rtol=0)


def test_a_version_loaded_by_reload_equals_a_fresh_engine_on_that_snapshot(adapter, versions, report):
    from vllm import SamplingParams

    adapter.load_version(versions.path(0))
    adapter.load_version(versions.path(2))
    prompts = _prompts(4, (8, 30))
    params = SamplingParams(max_tokens=16, temperature=0.0)
    scoring = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
    reloaded = adapter.generate(prompts, params)
    reloaded_prompt = _prompt_logprobs(adapter.llm, prompts, scoring)
    fresh = VllmRollout.from_snapshot(versions.path(2), engine_kwargs=ENGINE_KWARGS)
    try:
        started = fresh.generate(prompts, params)
        fresh_prompt = _prompt_logprobs(fresh.llm, prompts, scoring)
    finally:
        shutdown(fresh.llm)
    for a, b in zip(reloaded, started):
        assert a.token_ids == b.token_ids
        np.testing.assert_allclose(a.behavior_logprobs, b.behavior_logprobs, atol=1e-6, rtol=0)
    worst = max(np.abs(a - b).max() for a, b in zip(reloaded_prompt, fresh_prompt))
    report(f"reload vs fresh engine on v2, prompt log-probs (fp32): max |diff| = {worst:.3e}")
    assert worst <= 1e-6
    expected = versions.reference(2, prompts[1])[1:]
    assert np.abs(reloaded_prompt[1] - expected).max() <= 1e-4


def _prompt_logprobs(llm, prompts, params) -> list[np.ndarray]:
    from vllm.inputs import TokensPrompt

    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    return [np.array([next(iter(e.values())).logprob for e in o.prompt_logprobs[1:]]) for o in outputs]


def test_a_snapshot_that_fails_its_digest_is_never_loaded(adapter, versions, tmp_path):
    adapter.load_version(versions.path(0))
    broken = tmp_path / "v00000001"
    shutil.copytree(versions.path(1), broken)
    weights = broken / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(SnapshotCorrupt):
        adapter.request_version(broken)
    with pytest.raises(SnapshotCorrupt):
        adapter.load_version(broken)
    with pytest.raises(ValueError, match="digest"):
        adapter.load_version(versions.path(1), digest="0" * 64)
    with pytest.raises(ValueError, match="version"):
        adapter.load_version(versions.path(1), policy_version=2)
    assert adapter.policy_version == 0

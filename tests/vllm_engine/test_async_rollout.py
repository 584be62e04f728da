"""The rollout adapter on vLLM's asyncio engine: concurrent rollouts interrupted by a switch and resumed."""

from __future__ import annotations

import asyncio

import numpy as np

from logit_client.rollout import Rollout
from logit_client.vllm_rollout import AsyncVllmRollout
from tests.vllm_engine.helpers import ENGINE_KWARGS, VOCAB

MAX_TOKENS = 64


class FakeLeaseClient:
    """Records lease calls (the real service is exercised in test_rollout_through_service)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    async def lease_versions(self, policy_versions, *, holder, ttl_s):
        self.calls.append(("lease", tuple(policy_versions)))
        return tuple(policy_versions)

    async def release_versions(self, policy_versions, *, holder):
        self.calls.append(("release", tuple(policy_versions)))


async def test_async_rollouts_switch_mid_sequence_and_keep_their_stamps(versions):
    from vllm import SamplingParams

    leases = FakeLeaseClient()
    adapter = AsyncVllmRollout.from_snapshot(versions.path(0), engine_kwargs=ENGINE_KWARGS, client=leases)
    try:
        rng = np.random.default_rng(11)
        rollouts = [Rollout(rng.integers(0, VOCAB, size=n).tolist(), sample_id=f"r{n}") for n in (5, 12, 20)]
        params = SamplingParams(max_tokens=MAX_TOKENS, seed=5)
        tasks = [asyncio.create_task(adapter.generate(r, params)) for r in rollouts]
        while min(r.num_generated for r in rollouts) < 4:  # progress made by the engine, not a timer
            await asyncio.sleep(0.005)
        await adapter.switch_version(versions.path(1))
        done = await asyncio.gather(*tasks)
    finally:
        adapter.shutdown()
    assert adapter.policy_version == 1
    crossed = [r for r in done if r.interruptions]
    assert crossed, "the switch interrupted no rollout"
    for rollout in done:
        assert rollout.finished and rollout.num_generated == MAX_TOKENS
        assert rollout.versions == sorted(rollout.versions)  # 0s then 1s, never back
        ids, tags = rollout.all_token_ids, rollout.all_versions
        for v in rollout.generated_versions:
            expected = versions.reference(v, ids)[tags == v]
            np.testing.assert_allclose(rollout.all_behavior_logprobs[tags == v], expected, atol=1e-4, rtol=0)
    for rollout in crossed:
        assert rollout.generated_versions == (0, 1) and rollout.versions.index(1) >= 4
    assert leases.calls == [("lease", (0,))]
    await adapter.hand_over(done)
    assert leases.calls[-1] == ("release", (0,))

"""Adapter rollouts scored by the service: exact π_θv, leases over partial rollouts, segment submission,
and the measured train–inference discrepancy |log π_θv − log μ_v| per dtype."""

from __future__ import annotations

import numpy as np
import pytest

from logit_client import LogitClient, TokenSource, VersionOutsideWindow
from logit_client.vllm_rollout import VllmRollout
from logit_service.config import ServerConfig
from logit_service.server.app import ServerThread
from tests.vllm_engine.helpers import ENGINE_KWARGS, VOCAB, shutdown

MAX_TOKENS = 32
SWITCH_AFTER = 10
# The service's answer vs a direct forward of the same dtype (the trainer's): exact up to rounding.
SERVED_TOLERANCE = {"float32": 1e-5, "bfloat16": 2e-2}


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def dtype(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def engine(versions, dtype):
    """The vLLM engine in `dtype`, shared by the module's tests; each test wraps it in its own adapter."""
    adapter = VllmRollout.from_snapshot(versions.path(0), dtype=dtype, engine_kwargs=ENGINE_KWARGS)
    yield adapter.llm
    shutdown(adapter.llm)


@pytest.fixture
def service(tmp_path, dtype):
    snapshot_dir = tmp_path / "snapshots"
    config = ServerConfig(snapshot_dir=snapshot_dir, port=0, retention_window=2, dtype=dtype, scan_interval_s=0.05)
    server = ServerThread(config).start()
    client = LogitClient(server.address, timeout_s=120)
    yield client, snapshot_dir
    client.close()
    server.stop()


def _publish(client, versions, snapshot_dir, version):
    published = client.publish(version, versions.states[version], snapshot_dir, model_config=versions.config)
    return snapshot_dir / published.snapshot_path.rsplit("/", 1)[-1], published


def _adapter(engine, versions, client, snapshot_dir, **kwargs) -> VllmRollout:
    from logit_client.vllm_rollout import verify_snapshot_dir

    path, published = _publish(client, versions, snapshot_dir, 0)
    adapter = VllmRollout(engine, verify_snapshot_dir(path, digest=published.digest), client=client, holder="rollouts-a", **kwargs)
    adapter.load_version(path)
    return adapter


def _generate_across_a_switch(adapter, versions, client, snapshot_dir):
    from vllm import SamplingParams

    def on_step(adapter, batch):
        if adapter.policy_version == 0 and min(r.num_generated for r in batch) >= SWITCH_AFTER:
            path, published = _publish(client, versions, snapshot_dir, 1)
            adapter.request_version(path, policy_version=1, digest=published.digest)

    rng = np.random.default_rng(5)
    prompts = [rng.integers(0, VOCAB, size=n).tolist() for n in (6, 11, 17, 23)]
    return adapter.generate(prompts, SamplingParams(max_tokens=MAX_TOKENS, seed=7), on_step=on_step)


def test_adapter_rollouts_score_to_exact_old_logits_and_the_discrepancy_is_measured(engine, versions, service, dtype, report):
    import torch

    client, snapshot_dir = service
    adapter = _adapter(engine, versions, client, snapshot_dir)
    rollouts = _generate_across_a_switch(adapter, versions, client, snapshot_dir)
    assert adapter.leases.leased_versions == (0,)  # every rollout was interrupted holding version-0 tokens
    _publish(client, versions, snapshot_dir, 2)  # the window is now [1, 2]: only the lease keeps 0
    result = client.score([r.to_sequence_input() for r in rollouts])
    assert result.numerics == "training"
    served_error, gaps = 0.0, []
    for rollout, seq in zip(rollouts, result.sequences):
        mask = rollout.loss_mask
        assert (seq.sources[mask] == TokenSource.EXACT).all()
        assert (seq.served_versions[mask] == rollout.all_versions[mask]).all()
        model_dtype = getattr(torch, dtype)
        for v in rollout.generated_versions:
            at_v = rollout.all_versions == v
            direct = _direct_forward(versions, v, rollout.all_token_ids, model_dtype)
            served_error = max(served_error, float(np.abs(seq.logprobs[at_v] - direct[at_v]).max()))
        gaps.append(np.abs(seq.logprobs[mask].astype(np.float64) - rollout.all_behavior_logprobs[mask]))
    gaps = np.concatenate(gaps)
    report(
        f"[{dtype}] service vs direct forward: max {served_error:.2e}; |log π_θv − log μ_v| over "
        f"{gaps.size} tokens: mean {gaps.mean():.3e}, max {gaps.max():.3e}"
    )
    assert served_error <= SERVED_TOLERANCE[dtype]
    adapter.hand_over(rollouts)
    assert adapter.leases.leased_versions == ()
    with pytest.raises(VersionOutsideWindow):
        client.score([rollouts[0].to_sequence_input()])


def _direct_forward(versions, version, token_ids, model_dtype) -> np.ndarray:
    import torch

    model = versions.model_at(version, model_dtype)
    ids = torch.as_tensor(token_ids)[None]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    out = torch.log_softmax(logits[:-1], -1).gather(-1, ids[0, 1:, None])[:, 0].numpy()
    return np.concatenate([[np.nan], out]).astype(np.float32)


def test_submitted_segments_answer_after_the_version_left_the_window(engine, versions, service, dtype):
    if dtype != "float32":
        pytest.skip("the segment path is dtype-independent; once is enough")
    client, snapshot_dir = service
    adapter = _adapter(engine, versions, client, snapshot_dir, submit_segments=True)
    rollouts = _generate_across_a_switch(adapter, versions, client, snapshot_dir)
    assert all(r.submitted_until == len(r.prompt_token_ids) + r.num_generated for r in rollouts)
    client.barrier(1)  # every submitted segment is scored
    _publish(client, versions, snapshot_dir, 2)
    adapter.hand_over(rollouts)  # version 0 is now evicted; its kept results remain
    result = client.score([r.to_sequence_input() for r in rollouts])
    for rollout, seq in zip(rollouts, result.sequences):
        at_0 = rollout.all_versions == 0
        expected = versions.reference(0, rollout.all_token_ids)[at_0]
        np.testing.assert_allclose(seq.logprobs[at_0], expected, atol=1e-5, rtol=0)

"""Closed-form checks of the decoupled PPO loss on hand-picked ratios and weights."""

import math
import os
import subprocess
import sys

import pytest
import torch
from pydantic import ValidationError

from logit_client.loss import DecoupledPPOConfig, TokenSource, decoupled_ppo_loss

PROXIMAL = -1.3  # any anchor works; only differences of log-probs enter the loss


def _inputs(log_r, log_w, advantages, loss_mask=None, dtype=torch.float64, proximal=PROXIMAL):
    """[batch, seq] inputs with exp(policy − proximal) = exp(log_r) and exp(proximal − behavior) = exp(log_w).

    With proximal = 0 the differences are exact, which the boundary cases need.
    """
    log_r = torch.tensor(log_r, dtype=dtype)
    log_w = torch.tensor(log_w, dtype=dtype)
    proximal = torch.full_like(log_r, proximal)
    return dict(
        policy_logprobs=(proximal + log_r).requires_grad_(),
        proximal_logprobs=proximal,
        behavior_logprobs=proximal - log_w,
        advantages=torch.tensor(advantages, dtype=dtype),
        loss_mask=torch.ones_like(log_r, dtype=torch.bool) if loss_mask is None else torch.tensor(loss_mask),
    )


def _ppo_clip_reference(policy, proximal, advantages, loss_mask, eps=0.2):
    """Plain PPO-clip written out independently: −min(rA, clip(r)A), masked token mean."""
    r = torch.exp(policy - proximal)
    per_token = -torch.min(r * advantages, torch.clamp(r, 1 - eps, 1 + eps) * advantages)
    return (per_token * loss_mask).sum() / loss_mask.sum()


@pytest.mark.parametrize(
    ("ratio", "advantage", "config", "expected_loss", "clipfrac", "dual_clipfrac"),
    [
        pytest.param(1.1, 1.0, {}, -1.1, 0.0, 0.0, id="ratio inside clip"),
        pytest.param(1.5, 2.0, {}, -2.4, 1.0, 0.0, id="positive advantage above the clip"),
        pytest.param(0.5, 1.0, {}, -0.5, 0.0, 0.0, id="positive advantage below the clip keeps the ratio"),
        pytest.param(0.5, -1.0, {}, 0.8, 1.0, 0.0, id="negative advantage below the clip"),
        pytest.param(1.5, -1.0, {}, 1.5, 0.0, 0.0, id="negative advantage above the clip keeps the ratio"),
        pytest.param(4.0, -1.0, {"dual_clip": 3.0}, 3.0, 0.0, 1.0, id="negative advantage beyond dual clip"),
        pytest.param(2.0, -1.0, {"dual_clip": 3.0}, 2.0, 0.0, 0.0, id="negative advantage inside dual clip"),
        pytest.param(4.0, 1.0, {"dual_clip": 3.0}, -1.2, 1.0, 0.0, id="positive advantage ignores dual clip"),
        pytest.param(1.5, 1.0, {"clip_eps_high": 0.28}, -1.28, 1.0, 0.0, id="asymmetric upper clip"),
        pytest.param(0.5, -1.0, {"clip_eps_low": 0.1}, 0.9, 1.0, 0.0, id="asymmetric lower clip"),
    ],
)
def test_ppo_clip_closed_form(ratio, advantage, config, expected_loss, clipfrac, dual_clipfrac):
    inputs = _inputs([[math.log(ratio)]], [[0.0]], [[advantage]])

    out = decoupled_ppo_loss(**inputs, config=DecoupledPPOConfig(**config))

    assert out.loss.item() == pytest.approx(expected_loss, rel=1e-12)
    assert out.metrics["loss/pg"] == pytest.approx(expected_loss, rel=1e-12)
    assert out.metrics["loss/clipfrac"] == clipfrac
    assert out.metrics["loss/dual_clipfrac"] == dual_clipfrac


@pytest.mark.parametrize(
    ("log_w", "capped_frac"),
    [
        pytest.param(math.log(1.5), 0.0, id="weight below cap"),
        pytest.param(math.log(2.0), 0.0, id="weight exactly at cap is not capped"),
        pytest.param(math.log(2.0) + 1e-9, 1.0, id="weight just above cap is capped"),
        pytest.param(math.log(7.0), 1.0, id="weight far above cap"),
    ],
)
def test_is_cap_boundary(log_w, capped_frac):
    inputs = _inputs([[0.0]], [[log_w]], [[1.0]], proximal=0.0)

    out = decoupled_ppo_loss(**inputs, config=DecoupledPPOConfig(is_cap=2.0))

    expected_w = min(math.exp(log_w), 2.0)
    assert out.loss.item() == pytest.approx(-expected_w, rel=1e-12)
    assert out.metrics["discrepancy/is_capped_frac"] == capped_frac
    assert out.metrics["discrepancy/is_weight_mean"] == pytest.approx(expected_w, rel=1e-12)


@pytest.mark.parametrize(
    ("is_level", "expected_loss"),
    [
        pytest.param("token", -(1.5 + 0.8) / 2, id="token weights"),
        pytest.param("sequence", -1.2, id="sequence weight is the product"),
        pytest.param("geometric", -math.sqrt(1.2), id="geometric weight is the mean in log space"),
        pytest.param("none", -1.0, id="no weight"),
    ],
)
def test_is_level(is_level, expected_loss):
    # The third token is padding with an absurd weight: it must not enter the sequence aggregates.
    inputs = _inputs([[0.0, 0.0, 0.0]], [[math.log(1.5), math.log(0.8), 9.0]], [[1.0, 1.0, 1.0]], [[True, True, False]])
    out = decoupled_ppo_loss(**inputs, config=DecoupledPPOConfig(is_level=is_level, is_cap=None))

    assert out.loss.item() == pytest.approx(expected_loss, rel=1e-12)


# Three sequences of two tokens, all with r = 1; weights per token and advantages per sequence:
#   seq 0: w = [1.5, 0.8], A = 1    product 1.2,  geometric 1.095
#   seq 1: w = [1.2, 1.2], A = 3    product 1.44, geometric 1.2
#   seq 2: w = [1.6, 1.2], A = 5    product 1.92, geometric 1.386
MASK_LOG_W = [[math.log(1.5), math.log(0.8)], [math.log(1.2), math.log(1.2)], [math.log(1.6), math.log(1.2)]]
MASK_ADV = [[1.0, 1.0], [3.0, 3.0], [5.0, 5.0]]


@pytest.mark.parametrize(
    ("config", "expected_loss", "masked_frac"),
    [
        pytest.param({"mask_level": "token"}, -(3 + 3 + 5) / 6, 3 / 6, id="token mask"),
        pytest.param({"mask_level": "sequence"}, -(1 + 1) / 6, 4 / 6, id="sequence mask"),
        pytest.param({"mask_level": "geometric"}, -(1 + 1 + 3 + 3) / 6, 2 / 6, id="geometric mask"),
        pytest.param({"mask_low": None}, -(1 + 3 + 3 + 5) / 6, 2 / 6, id="token mask upper bound only"),
        pytest.param({"mask_high": None}, -(1 + 3 + 3 + 5 + 5) / 6, 1 / 6, id="token mask lower bound only"),
    ],
)
def test_discrepancy_mask(config, expected_loss, masked_frac):
    # is_level "none" isolates the mask: every surviving token contributes exactly −A.
    config = DecoupledPPOConfig(**{"is_level": "none", "mask_low": 0.9, "mask_high": 1.3, **config})
    out = decoupled_ppo_loss(**_inputs([[0.0, 0.0]] * 3, MASK_LOG_W, MASK_ADV), config=config)

    assert out.loss.item() == pytest.approx(expected_loss, rel=1e-12)
    assert out.metrics["discrepancy/masked_frac"] == pytest.approx(masked_frac, rel=1e-12)


@pytest.mark.parametrize(
    ("log_w", "kept"),
    [
        pytest.param(math.log(0.5), True, id="weight exactly at mask_low is kept"),
        pytest.param(math.log(2.0), True, id="weight exactly at mask_high is kept"),
        pytest.param(math.log(0.5) - 1e-9, False, id="weight just below mask_low is masked"),
        pytest.param(math.log(2.0) + 1e-9, False, id="weight just above mask_high is masked"),
    ],
)
def test_mask_window_is_closed(log_w, kept):
    inputs = _inputs([[0.0]], [[log_w]], [[1.0]], proximal=0.0)
    config = DecoupledPPOConfig(is_level="none", mask_low=0.5, mask_high=2.0)

    out = decoupled_ppo_loss(**inputs, config=config)

    assert out.loss.item() == (-1.0 if kept else 0.0)
    assert out.metrics["discrepancy/masked_frac"] == (0.0 if kept else 1.0)


def test_overflowed_sequence_weight_that_is_masked_leaves_no_nan():
    # Sequence 0's product weight exp(2 · 60) overflows float32 to inf; the sequence mask drops it.
    log_w = [[60.0, 60.0], [0.0, 0.0]]
    inputs = _inputs([[0.1, 0.1], [0.1, 0.1]], log_w, [[1.0, 1.0], [1.0, 1.0]], dtype=torch.float32)
    config = DecoupledPPOConfig(is_level="sequence", is_cap=None, mask_level="sequence", mask_high=10.0)

    out = decoupled_ppo_loss(**inputs, config=config)
    out.loss.backward()

    assert out.loss.item() == pytest.approx(-2 * math.exp(0.1) / 4, rel=1e-6)
    assert torch.isfinite(inputs["policy_logprobs"].grad).all()
    assert torch.equal(inputs["policy_logprobs"].grad[0], torch.zeros(2))


@pytest.mark.parametrize(
    ("threshold", "expected_loss", "masked_frac"),
    [
        pytest.param(1e-4, -2 / 4, 2 / 4, id="catastrophic reject drops the whole sequence"),
        pytest.param(1e-6, -4 / 4, 0.0, id="weight above the threshold keeps the sequence"),
    ],
)
def test_catastrophic_reject(threshold, expected_loss, masked_frac):
    # Sequence 1's tiny weight sits on a padding token, so it must not trigger a reject.
    inputs = _inputs(
        [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
        [[0.0, math.log(1e-5), 0.0], [0.0, 0.0, math.log(1e-9)]],
        [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]],
        [[True, True, False], [True, True, False]],
    )
    out = decoupled_ppo_loss(**inputs, config=DecoupledPPOConfig(is_level="none", catastrophic_threshold=threshold))

    assert out.loss.item() == pytest.approx(expected_loss, rel=1e-12)
    assert out.metrics["discrepancy/masked_frac"] == pytest.approx(masked_frac, rel=1e-12)


@pytest.mark.parametrize(
    ("loss_agg", "expected_loss"),
    [
        pytest.param("token-mean", -(1 + 2 + 3 + 4) / 4, id="token-mean"),
        pytest.param("seq-mean-token-mean", -((1 + 2 + 3) / 3 + 4 / 1) / 2, id="seq-mean-token-mean"),
        pytest.param("seq-mean-token-sum", -((1 + 2 + 3) + 4) / 2, id="seq-mean-token-sum"),
    ],
)
def test_loss_agg(loss_agg, expected_loss):
    # Sequence 2 has no loss-mask token, so the sequence means leave it out.
    inputs = _inputs(
        [[0.0] * 3] * 3,
        [[0.0] * 3] * 3,
        [[1.0, 2.0, 3.0], [4.0, 9.0, 9.0], [9.0, 9.0, 9.0]],
        [[True, True, True], [True, False, False], [False, False, False]],
    )
    out = decoupled_ppo_loss(**inputs, config=DecoupledPPOConfig(loss_agg=loss_agg))

    assert out.loss.item() == pytest.approx(expected_loss, rel=1e-12)


@pytest.mark.parametrize(
    ("loss_agg", "expected_loss"),
    [
        pytest.param("token-mean", -1 / 2, id="token-mean"),
        pytest.param("seq-mean-token-mean", -1 / 2, id="seq-mean-token-mean"),
        pytest.param("seq-mean-token-sum", -1.0, id="seq-mean-token-sum"),
    ],
)
def test_masked_tokens_stay_in_the_denominator(loss_agg, expected_loss):
    inputs = _inputs([[0.0, 0.0]], [[0.0, math.log(5.0)]], [[1.0, 1.0]])
    config = DecoupledPPOConfig(is_level="none", mask_high=2.0, loss_agg=loss_agg)

    out = decoupled_ppo_loss(**inputs, config=config)

    assert out.loss.item() == pytest.approx(expected_loss, rel=1e-12)


def test_gradient_flows_only_into_policy_logprobs():
    # Token 0 inside the clip, token 1 clipped (A > 0, r > 1 + ε), token 2 outside the loss mask.
    inputs = _inputs(
        [[math.log(1.1), math.log(1.5), 0.3]], [[math.log(1.5), 0.0, 0.0]], [[2.0, 1.0, 1.0]], [[True, True, False]]
    )
    for name in ("proximal_logprobs", "behavior_logprobs", "advantages"):
        inputs[name].requires_grad_()
    ewma = torch.zeros_like(inputs["proximal_logprobs"]).fill_(PROXIMAL).requires_grad_()
    sources = torch.tensor([[TokenSource.EXACT, TokenSource.EXACT, TokenSource.EWMA]])

    out = decoupled_ppo_loss(**inputs, ewma_logprobs=ewma, sources=sources)
    out.loss.backward()

    # d/dlogπ of −w·A·r over N = 2 tokens is −w·A·r/N; clipped and masked tokens get none.
    expected = torch.tensor([[-1.5 * 2.0 * 1.1 / 2, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(inputs["policy_logprobs"].grad, expected, rtol=1e-12, atol=0.0)
    for name in ("proximal_logprobs", "behavior_logprobs", "advantages"):
        assert inputs[name].grad is None, name
    assert ewma.grad is None


def test_behavior_equal_to_proximal_is_plain_ppo_clip():
    generator = torch.Generator().manual_seed(0)
    proximal = -torch.rand(4, 7, generator=generator, dtype=torch.float64) * 3
    policy = (proximal + 0.5 * torch.randn(4, 7, generator=generator, dtype=torch.float64)).requires_grad_()
    advantages = torch.randn(4, 7, generator=generator, dtype=torch.float64)
    loss_mask = torch.rand(4, 7, generator=generator) > 0.3

    out = decoupled_ppo_loss(
        policy_logprobs=policy, proximal_logprobs=proximal, behavior_logprobs=proximal.clone(),
        advantages=advantages, loss_mask=loss_mask,
    )  # fmt: skip
    expected = _ppo_clip_reference(policy, proximal, advantages, loss_mask)

    torch.testing.assert_close(out.loss, expected, rtol=1e-12, atol=1e-12)
    (grad,) = torch.autograd.grad(out.loss, policy)
    (expected_grad,) = torch.autograd.grad(expected, policy)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-12)
    assert 0.0 < out.metrics["loss/clipfrac"] < 1.0
    assert out.metrics["discrepancy/kl"] == 0.0
    assert out.metrics["discrepancy/masked_frac"] == 0.0


def test_all_masked_batch_gives_zero_loss_and_backward_works():
    # Padding holds NaN and -inf, as real padded batches do; none of it may leak into loss or gradient.
    policy = torch.tensor([[float("nan"), -1.0], [-2.0, float("-inf")]], requires_grad=True)
    out = decoupled_ppo_loss(
        policy_logprobs=policy, proximal_logprobs=torch.full((2, 2), float("nan")),
        behavior_logprobs=torch.full((2, 2), float("-inf")), advantages=torch.ones(2, 2),
        loss_mask=torch.zeros(2, 2, dtype=torch.bool),
    )  # fmt: skip
    out.loss.backward()

    assert out.loss.item() == 0.0
    assert torch.equal(policy.grad, torch.zeros(2, 2))
    assert all(value == 0.0 for value in out.metrics.values()), out.metrics


def test_float64_matches_float32():
    inputs64 = _inputs([[0.05, 0.4, -0.5]], [[0.1, -0.2, 0.9]], [[1.0, -2.0, 0.5]], dtype=torch.float64)
    inputs32 = _inputs([[0.05, 0.4, -0.5]], [[0.1, -0.2, 0.9]], [[1.0, -2.0, 0.5]], dtype=torch.float32)

    out64 = decoupled_ppo_loss(**inputs64)
    out32 = decoupled_ppo_loss(**inputs32)
    out64.loss.backward()

    assert out64.loss.dtype == torch.float64 and out32.loss.dtype == torch.float32
    assert inputs64["policy_logprobs"].grad.dtype == torch.float64
    # r = [e^0.05, e^0.4, e^-0.5] all take the unclipped branch; w = [e^0.1, e^-0.2, e^0.9 → 2.0 capped].
    expected = -(math.exp(0.1) * math.exp(0.05) - 2.0 * math.exp(-0.2) * math.exp(0.4) + 2.0 * 0.5 * math.exp(-0.5)) / 3
    assert out64.loss.item() == pytest.approx(expected, rel=1e-12)
    assert out32.loss.item() == pytest.approx(expected, rel=1e-6)


def test_ewma_sources_substitute_ewma_logprobs():
    generator = torch.Generator().manual_seed(1)
    policy = -torch.rand(2, 3, generator=generator, dtype=torch.float64)
    # Unclipped and uncapped, w·r = π_θ/μ whatever the anchor; spreads this wide make the clip matter.
    exact = policy + 0.5 * torch.randn(2, 3, generator=generator, dtype=torch.float64)
    ewma = policy + 0.5 * torch.randn(2, 3, generator=generator, dtype=torch.float64)
    behavior = policy + 0.5 * torch.randn(2, 3, generator=generator, dtype=torch.float64)
    advantages = torch.randn(2, 3, generator=generator, dtype=torch.float64)
    loss_mask = torch.tensor([[True, True, True], [True, True, False]])
    S = TokenSource
    sources = torch.tensor([[S.EXACT, S.EWMA, S.UNSPECIFIED], [S.EWMA, S.EXACT, S.EWMA]])
    # The service leaves the exact slot of an EWMA token empty; NaN proves it is never read.
    proximal = torch.where(sources == S.EWMA, torch.tensor(float("nan"), dtype=torch.float64), exact)
    substituted = torch.where(sources == S.EWMA, ewma, exact)
    common = dict(policy_logprobs=policy, behavior_logprobs=behavior, advantages=advantages, loss_mask=loss_mask)

    out = decoupled_ppo_loss(**common, proximal_logprobs=proximal, ewma_logprobs=ewma, sources=sources)
    reference = decoupled_ppo_loss(**common, proximal_logprobs=substituted)

    assert out.loss.item() == pytest.approx(reference.loss.item(), rel=1e-12)
    assert out.loss.item() != pytest.approx(decoupled_ppo_loss(**common, proximal_logprobs=exact).loss.item())
    assert out.metrics["approx/ewma_frac"] == pytest.approx(2 / 5)
    assert out.metrics["approx/unavailable_frac"] == 0.0
    # With sources the EWMA values are the anchor, not a spot check of it: nothing to compare.
    assert out.metrics["approx/ewma_abs_err"] == 0.0
    with pytest.raises(ValueError, match="ewma_logprobs is None"):
        decoupled_ppo_loss(**common, proximal_logprobs=proximal, sources=sources)


def test_unavailable_tokens_leave_the_loss_and_its_denominator():
    S = TokenSource
    inputs = _inputs([[0.1, 0.2, -0.1]], [[0.0, 0.3, 0.0]], [[1.0, 5.0, -1.0]])
    inputs["proximal_logprobs"] = torch.tensor([[PROXIMAL, float("nan"), PROXIMAL]], dtype=torch.float64)
    sources = torch.tensor([[S.EXACT, S.UNAVAILABLE, S.EXACT]])

    out = decoupled_ppo_loss(**inputs, sources=sources)
    out.loss.backward()

    # Only tokens 0 and 2 remain, and they are the whole denominator.
    expected = -(math.exp(0.1) * 1.0 + math.exp(-0.1) * -1.0) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    assert out.metrics["approx/unavailable_frac"] == pytest.approx(1 / 3)
    assert out.metrics["discrepancy/masked_frac"] == 0.0
    assert inputs["policy_logprobs"].grad[0, 1].item() == 0.0
    assert torch.isfinite(inputs["policy_logprobs"].grad).all()


def test_ewma_logprobs_without_sources_is_a_spot_check():
    inputs = _inputs([[0.1, -0.1]], [[0.0, 0.0]], [[1.0, 1.0]])
    ewma = inputs["proximal_logprobs"] + torch.tensor([[0.2, -0.4]], dtype=torch.float64)

    out = decoupled_ppo_loss(**inputs, ewma_logprobs=ewma)

    assert out.loss.item() == pytest.approx(decoupled_ppo_loss(**inputs).loss.item(), rel=1e-12)
    assert out.metrics["approx/ewma_abs_err"] == pytest.approx(0.3, rel=1e-12)
    assert out.metrics["approx/ewma_frac"] == 0.0


def test_staleness_metrics():
    inputs = _inputs([[0.0] * 3] * 2, [[0.0] * 3] * 2, [[1.0] * 3] * 2, [[True, True, True], [True, False, False]])
    versions = torch.tensor([[3, 4, 5], [5, 1, 0]])  # the last two are padding: they must not count

    out = decoupled_ppo_loss(**inputs, versions=versions, current_version=5)
    plain = decoupled_ppo_loss(**inputs)

    assert out.metrics["staleness/mean_versions"] == pytest.approx((2 + 1 + 0 + 0) / 4)
    assert out.metrics["staleness/max_versions"] == 2.0
    assert plain.metrics["staleness/mean_versions"] == 0.0
    assert plain.metrics["staleness/max_versions"] == 0.0
    with pytest.raises(ValueError, match="together"):
        decoupled_ppo_loss(**inputs, versions=versions)


def test_kl_metrics_use_the_k3_estimator():
    out = decoupled_ppo_loss(**_inputs([[0.1, -0.3]], [[0.2, 0.0]], [[0.0, 0.0]]))

    k3 = lambda x: math.exp(x) - 1 - x  # noqa: E731
    assert out.metrics["loss/approx_kl"] == pytest.approx((k3(0.1) + k3(-0.3)) / 2, rel=1e-12)
    assert out.metrics["discrepancy/kl"] == pytest.approx(k3(0.2) / 2, rel=1e-12)


def test_token_source_values_match_the_wire():
    expected = [("UNSPECIFIED", 0), ("EXACT", 1), ("EWMA", 2), ("UNAVAILABLE", 3)]
    assert [(source.name, int(source)) for source in TokenSource] == expected


def test_metrics_are_python_floats_with_slash_names():
    out = decoupled_ppo_loss(**_inputs([[0.1]], [[0.1]], [[1.0]]))

    required = {
        "loss/pg", "loss/clipfrac", "loss/dual_clipfrac", "loss/approx_kl", "discrepancy/is_capped_frac",
        "discrepancy/masked_frac", "discrepancy/kl", "staleness/mean_versions", "staleness/max_versions",
        "approx/ewma_frac", "approx/unavailable_frac", "approx/ewma_abs_err",
    }  # fmt: skip
    assert required <= out.metrics.keys()
    assert out.metrics["approx/ewma_abs_err"] == 0.0  # no EWMA given: nothing to compare
    assert all(type(value) is float and "/" in key for key, value in out.metrics.items())


@pytest.mark.parametrize(
    ("override", "message"),
    [
        pytest.param({"advantages": torch.zeros(2, 4)}, "advantages has shape", id="shape mismatch"),
        pytest.param({"loss_mask": torch.ones(2, 3)}, "loss_mask must be a bool", id="float loss mask"),
        pytest.param(
            {"behavior_logprobs": torch.zeros(2, 3, dtype=torch.long)}, "floating-point", id="integer logprobs"
        ),
        pytest.param({"sources": torch.zeros(2, 3)}, "integer tensor", id="float sources"),
        pytest.param({"sources": torch.full((2, 3), 7)}, "TokenSource values", id="unknown source"),
        pytest.param({"ewma_logprobs": torch.zeros(3, 2)}, "ewma_logprobs has shape", id="ewma shape mismatch"),
    ],
)
def test_invalid_inputs_raise(override, message):
    inputs = dict(
        policy_logprobs=torch.zeros(2, 3), proximal_logprobs=torch.zeros(2, 3), behavior_logprobs=torch.zeros(2, 3),
        advantages=torch.zeros(2, 3), loss_mask=torch.ones(2, 3, dtype=torch.bool),
    )  # fmt: skip
    with pytest.raises(ValueError, match=message):
        decoupled_ppo_loss(**{**inputs, **override})


def test_one_dimensional_inputs_raise():
    flat = torch.zeros(3)
    with pytest.raises(ValueError, match=r"\[batch, seq\]"):
        decoupled_ppo_loss(
            policy_logprobs=flat, proximal_logprobs=flat, behavior_logprobs=flat, advantages=flat,
            loss_mask=torch.ones(3, dtype=torch.bool),
        )  # fmt: skip


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"dual_clip": 1.0}, id="dual clip must exceed 1"),
        pytest.param({"is_cap": 0.0}, id="cap must be positive"),
        pytest.param({"mask_low": 2.0, "mask_high": 2.0}, id="mask window must be ordered"),
        pytest.param({"is_level": "segment"}, id="unknown level"),
        pytest.param({"loss_agg": "sum"}, id="unknown aggregation"),
        pytest.param({"clip_eps": 0.2}, id="unknown key"),
    ],
)
def test_invalid_config_raises(kwargs):
    with pytest.raises(ValidationError):
        DecoupledPPOConfig(**kwargs)


def test_config_defaults_and_frozen():
    config = DecoupledPPOConfig()

    assert (config.clip_eps_low, config.clip_eps_high, config.dual_clip) == (0.2, 0.2, None)
    assert (config.is_level, config.is_cap, config.mask_level, config.loss_agg) == ("token", 2.0, "token", "token-mean")
    assert (config.mask_low, config.mask_high, config.catastrophic_threshold) == (None, None, None)
    assert all(field.description for field in DecoupledPPOConfig.model_fields.values())
    with pytest.raises(ValidationError):
        config.is_cap = 3.0


def test_import_stays_light():
    # The package itself loads grpc for its client; the loss module must add none of the heavy stacks.
    code = (
        "import sys, logit_client; before = set(sys.modules); import logit_client.loss; "
        "added = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "heavy = sorted(added & {'transformers', 'grpc', 'vllm', 'ray'}) "
        "+ [m for m in ('transformers', 'vllm', 'ray') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)

"""The decoupled PPO loss: a PPO clip on the staleness ratio and a detached weight on the discrepancy ratio.

Owns the per-token objective and its metrics. It does not fetch log-probs (the client does) and does not
choose the anchor: the naive baselines (recompute-at-current, bypass with μ as old) are this same
function fed different `proximal_logprobs`.

The ratio factors as follows:

    π_θ/μ_v = [π_prox/μ_v] · [π_θ/π_prox]       discrepancy term · staleness term

with π_prox = π_{θ_v} (exact old logits) or π_ewma for tokens the service marked EWMA (the revised
PPO-EWMA route). Per token t, with A the advantage and sg the stop-gradient:

    r_t  = exp(log π_θ − log π_prox)                                         (staleness ratio)
    pg_t = max(−A_t r_t, −A_t clip(r_t, 1 − ε_low, 1 + ε_high))              (PPO clip)
    pg_t = min(pg_t, c·|A_t|)                                                (dual clip, if c is set)
    w_t  = sg(min(exp(log π_prox − log μ), C))                               (truncated discrepancy weight)
    L    = Σ_t keep_t · w_t · pg_t / Σ_t m_t                                 ("token-mean")

where m is the loss mask of tokens that have an anchor and keep ⊆ m drops the tokens the discrepancy
mask or the catastrophic reject rejected. Without the cap, w_t·pg_t = −min(π_θ/μ·A, π_prox/μ·clip(r)·A)
is the decoupled PPO objective of Hilton, Cobbe & Schulman 2021 ("Batch size-invariance for policy
optimization", arXiv 2110.00641), whose clipped branch PPO-EWMA evaluates in log space. The dual clip
is that of Ye et al. 2020 (arXiv 1912.09729).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from logit_common.extras import missing_extra

try:
    import torch
except ModuleNotFoundError as e:
    raise missing_extra(e, extra="publish", needed_for="the decoupled PPO loss") from e
from pydantic import BaseModel, ConfigDict, Field, model_validator

# One enum for the wire's per-token provenance, shared with the service (values 0..3 match the proto).
from logit_common.types import TokenSource

__all__ = ["DecoupledPPOConfig", "DecoupledPPOOutput", "TokenSource", "decoupled_ppo_loss"]

WeightLevel = Literal["token", "sequence", "geometric"]
LossAgg = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"]


class DecoupledPPOConfig(BaseModel):
    """Thresholds of the decoupled PPO loss; the defaults give PPO-clip with a token-level weight cap of 2."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    clip_eps_low: float = Field(default=0.2, ge=0.0, le=1.0)
    """ε_low: the staleness ratio r is clipped from below at 1 − ε_low."""
    clip_eps_high: float = Field(default=0.2, ge=0.0)
    """ε_high: the staleness ratio r is clipped from above at 1 + ε_high."""
    dual_clip: float | None = Field(default=None, gt=1.0)
    """c of the dual clip, pg = min(pg, c·|A|); it only binds for A < 0. None turns it off."""
    is_level: Literal["token", "sequence", "geometric", "none"] = "token"
    """Level of the discrepancy weight w: per token, sequence product, geometric mean, or none (w = 1)."""
    is_cap: float | None = Field(default=2.0, gt=0.0)
    """Truncation C of the discrepancy weight, w = min(w, C). None leaves w untruncated."""
    mask_low: float | None = Field(default=None, ge=0.0)
    """Tokens whose weight at `mask_level` is below this leave the loss. None: no lower bound."""
    mask_high: float | None = Field(default=None, gt=0.0)
    """Tokens whose weight at `mask_level` is above this leave the loss. None: no upper bound."""
    mask_level: WeightLevel = "token"
    """Level at which the mask window is tested: per token, or a whole sequence by product or geometric mean."""
    catastrophic_threshold: float | None = Field(default=None, gt=0.0)
    """τ: a sequence with any token-level weight below τ leaves the loss entirely. None turns it off."""
    loss_agg: LossAgg = "token-mean"
    """How token losses are reduced; the denominators always count the tokens before any masking."""

    @model_validator(mode="after")
    def _mask_window_is_ordered(self) -> DecoupledPPOConfig:
        if self.mask_low is not None and self.mask_high is not None and self.mask_low >= self.mask_high:
            raise ValueError(f"mask_low ({self.mask_low}) must be below mask_high ({self.mask_high})")
        return self


@dataclass(frozen=True)
class DecoupledPPOOutput:
    """The scalar loss (with gradient into `policy_logprobs` only) and its metrics as python floats."""

    loss: torch.Tensor
    metrics: dict[str, float]


def decoupled_ppo_loss(
    *,
    policy_logprobs: torch.Tensor,
    proximal_logprobs: torch.Tensor,
    behavior_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    config: DecoupledPPOConfig = DecoupledPPOConfig(),
    ewma_logprobs: torch.Tensor | None = None,
    sources: torch.Tensor | None = None,
    versions: torch.Tensor | None = None,
    current_version: int | None = None,
) -> DecoupledPPOOutput:
    """Decoupled PPO loss over `[batch, seq]` tensors, computed in `policy_logprobs.dtype`.

    `sources` (ints of `TokenSource`) says, per token, whether `proximal_logprobs` is exact (EXACT or
    UNSPECIFIED), replaced by `ewma_logprobs` (EWMA), or missing (UNAVAILABLE). UNAVAILABLE tokens leave
    the loss and its denominators: with no valid anchor they can be neither clipped nor weighted, and
    counting them would silently shrink the gradient of the batch. Given without `sources`,
    `ewma_logprobs` does not enter the loss; it is compared with `proximal_logprobs`
    (`approx/ewma_abs_err`), the service's spot-check mode.

    `versions` (the policy version that generated each token) with `current_version` feed the
    staleness metrics only.
    """
    _check_inputs(
        policy_logprobs, proximal_logprobs, behavior_logprobs, advantages, loss_mask,
        ewma_logprobs, sources, versions, current_version,
    )  # fmt: skip
    dtype = policy_logprobs.dtype
    if sources is None:
        is_ewma = torch.zeros_like(loss_mask)
        unavailable = torch.zeros_like(loss_mask)
    else:
        is_ewma = sources == TokenSource.EWMA
        unavailable = sources == TokenSource.UNAVAILABLE
    anchored = loss_mask & ~unavailable

    # Everything but the current policy is a constant of the objective.
    anchor = proximal_logprobs.detach().to(dtype)
    if sources is not None and ewma_logprobs is not None:
        anchor = torch.where(is_ewma, ewma_logprobs.detach().to(dtype), anchor)
    # Off-mask positions often hold padding (0, -inf, NaN); zeroing them before exp keeps NaN out of the
    # sums and, through torch.where, out of the gradient.
    zero = torch.zeros((), dtype=dtype, device=policy_logprobs.device)
    anchor = torch.where(anchored, anchor, zero)
    behavior = torch.where(anchored, behavior_logprobs.detach().to(dtype), zero)
    A = torch.where(anchored, advantages.detach().to(dtype), zero)

    log_r = torch.where(anchored, policy_logprobs - anchor, zero)
    r = torch.exp(log_r)
    pg_unclipped = -A * r
    pg_clipped = -A * torch.clamp(r, 1.0 - config.clip_eps_low, 1.0 + config.clip_eps_high)
    pg = torch.maximum(pg_unclipped, pg_clipped)
    dual_active = torch.zeros_like(anchored)
    if config.dual_clip is not None:
        # For A ≥ 0, pg ≤ 0 ≤ c·|A| so the bound never binds; for A < 0 it caps pg at c·|A| once r > c.
        dual_bound = config.dual_clip * A.abs()
        dual_active = pg > dual_bound
        pg = torch.minimum(pg, dual_bound)

    log_w_token = anchor - behavior  # log(π_prox/μ), zero off the anchored mask
    if config.is_level == "none":
        w = torch.ones_like(log_w_token)
    else:
        w = torch.exp(_level_log_weight(log_w_token, anchored, config.is_level))
    capped = torch.zeros_like(anchored)
    if config.is_cap is not None:
        capped = w > config.is_cap
        w = torch.clamp(w, max=config.is_cap)

    keep = anchored
    if config.mask_low is not None or config.mask_high is not None:
        # The window is tested on the weight before the cap: a cap bounds influence, a mask rejects.
        w_mask = torch.exp(_level_log_weight(log_w_token, anchored, config.mask_level))
        if config.mask_low is not None:
            keep = keep & (w_mask >= config.mask_low)
        if config.mask_high is not None:
            keep = keep & (w_mask <= config.mask_high)
    if config.catastrophic_threshold is not None:
        catastrophic = anchored & (torch.exp(log_w_token) < config.catastrophic_threshold)
        keep = keep & ~catastrophic.any(dim=-1, keepdim=True)

    # Dropped tokens get weight 0 as well as loss 0: an overflowed (inf) sequence weight times the zero
    # gradient that torch.where passes back would otherwise put NaN into the policy gradient.
    token_loss = torch.where(keep, torch.where(keep, w, zero) * pg, zero)
    loss = _aggregate(token_loss, anchored, config.loss_agg)

    with torch.no_grad():
        metrics = _metrics(
            loss=loss, r=r, log_r=log_r, log_w_token=log_w_token, w=w, anchored=anchored, keep=keep,
            clipped=pg_clipped > pg_unclipped, dual_active=dual_active, capped=capped,
            loss_mask=loss_mask, is_ewma=is_ewma, unavailable=unavailable,
            spot_check=(ewma_logprobs if sources is None else None), proximal_logprobs=proximal_logprobs,
            versions=versions, current_version=current_version,
        )  # fmt: skip
    return DecoupledPPOOutput(loss=loss, metrics=metrics)


def _level_log_weight(log_w_token: torch.Tensor, anchored: torch.Tensor, level: str) -> torch.Tensor:
    """log w at `level`, broadcast to every token; sequence sums and means run over anchored tokens only."""
    if level == "token":
        return log_w_token
    log_w_sum = log_w_token.sum(dim=-1, keepdim=True)  # already zero off the anchored tokens
    if level == "sequence":
        return log_w_sum.expand_as(log_w_token)
    count = anchored.sum(dim=-1, keepdim=True).clamp(min=1)
    return (log_w_sum / count).expand_as(log_w_token)


def _aggregate(token_loss: torch.Tensor, anchored: torch.Tensor, loss_agg: str) -> torch.Tensor:
    """Reduce token losses; denominators count tokens before masking, so masking never inflates gradients."""
    if loss_agg == "token-mean":
        return token_loss.sum() / anchored.sum().clamp(min=1)
    per_seq = token_loss.sum(dim=-1)
    if loss_agg == "seq-mean-token-mean":
        per_seq = per_seq / anchored.sum(dim=-1).clamp(min=1)
    # A sequence with no anchored token has a zero loss already; it is left out of the mean.
    num_seqs = anchored.any(dim=-1).sum().clamp(min=1)
    return per_seq.sum() / num_seqs


def _mean(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    return torch.where(where, values, torch.zeros_like(values)).sum() / where.sum().clamp(min=1)


def _metrics(
    *,
    loss: torch.Tensor,
    r: torch.Tensor,
    log_r: torch.Tensor,
    log_w_token: torch.Tensor,
    w: torch.Tensor,
    anchored: torch.Tensor,
    keep: torch.Tensor,
    clipped: torch.Tensor,
    dual_active: torch.Tensor,
    capped: torch.Tensor,
    loss_mask: torch.Tensor,
    is_ewma: torch.Tensor,
    unavailable: torch.Tensor,
    spot_check: torch.Tensor | None,
    proximal_logprobs: torch.Tensor,
    versions: torch.Tensor | None,
    current_version: int | None,
) -> dict[str, float]:
    """Fractions and means over anchored tokens; `approx/*` fractions over the caller's loss_mask."""
    dtype = r.dtype
    zero = torch.zeros((), dtype=dtype, device=r.device)
    # KL estimates use k3 = (ρ − 1) − log ρ (Schulman's "approximating KL" note): ≥ 0 per token, and
    # unbiased for KL(q ‖ p) with ρ = p/q on tokens drawn from q. discrepancy/kl is KL(μ ‖ π_prox) with
    # ρ = w on tokens drawn from μ; loss/approx_kl is KL(π_prox ‖ π_θ) with ρ = r, only approximate
    # when μ ≠ π_prox.
    values = {
        "loss/pg": loss.detach(),
        "loss/clipfrac": _mean(clipped.to(dtype), anchored),
        "loss/dual_clipfrac": _mean(dual_active.to(dtype), anchored),
        "loss/approx_kl": _mean(r - 1 - log_r, anchored),
        "discrepancy/is_capped_frac": _mean(capped.to(dtype), anchored),
        "discrepancy/is_weight_mean": _mean(w, anchored),
        "discrepancy/masked_frac": _mean((anchored & ~keep).to(dtype), anchored),
        "discrepancy/kl": _mean(torch.exp(log_w_token) - 1 - log_w_token, anchored),
        "approx/ewma_frac": _mean(is_ewma.to(dtype), loss_mask),
        "approx/unavailable_frac": _mean(unavailable.to(dtype), loss_mask),
        "approx/ewma_abs_err": zero,
        "staleness/mean_versions": zero,
        "staleness/max_versions": zero,
    }
    if spot_check is not None:
        abs_err = (spot_check.detach().to(dtype) - proximal_logprobs.detach().to(dtype)).abs()
        values["approx/ewma_abs_err"] = _mean(abs_err, anchored)
    if versions is not None and current_version is not None:
        staleness = (current_version - versions).to(dtype)
        values["staleness/mean_versions"] = _mean(staleness, loss_mask)
        lowest = torch.full_like(staleness, torch.finfo(dtype).min)
        max_staleness = torch.where(loss_mask, staleness, lowest).max()
        values["staleness/max_versions"] = torch.where(loss_mask.any(), max_staleness, zero)
    # One device-to-host copy for all metrics instead of one sync per .item().
    floats = torch.stack([v.to(dtype) for v in values.values()]).tolist()
    return dict(zip(values.keys(), floats, strict=True))


def _check_inputs(
    policy_logprobs: torch.Tensor,
    proximal_logprobs: torch.Tensor,
    behavior_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    ewma_logprobs: torch.Tensor | None,
    sources: torch.Tensor | None,
    versions: torch.Tensor | None,
    current_version: int | None,
) -> None:
    if policy_logprobs.dim() != 2:
        raise ValueError(f"policy_logprobs must be [batch, seq], got shape {tuple(policy_logprobs.shape)}")
    shape, device = policy_logprobs.shape, policy_logprobs.device
    named = {
        "policy_logprobs": policy_logprobs,
        "proximal_logprobs": proximal_logprobs,
        "behavior_logprobs": behavior_logprobs,
        "advantages": advantages,
        "loss_mask": loss_mask,
        "ewma_logprobs": ewma_logprobs,
        "sources": sources,
        "versions": versions,
    }
    for name, tensor in named.items():
        if tensor is None:
            continue
        if tensor.shape != shape:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)}; every input must match policy_logprobs {tuple(shape)}"
            )
        if tensor.device != device:
            raise ValueError(f"{name} is on {tensor.device}; every input must be on {device}")
    for name in ("policy_logprobs", "proximal_logprobs", "behavior_logprobs", "advantages", "ewma_logprobs"):
        tensor = named[name]
        if tensor is not None and not tensor.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {tensor.dtype}")
    if loss_mask.dtype != torch.bool:
        raise ValueError(f"loss_mask must be a bool tensor, got {loss_mask.dtype}")
    for name in ("sources", "versions"):
        tensor = named[name]
        if tensor is not None and (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool):
            raise ValueError(f"{name} must be an integer tensor, got {tensor.dtype}")
    if (versions is None) != (current_version is None):
        raise ValueError("versions and current_version must be given together")
    if sources is not None:
        lo, hi = min(TokenSource), max(TokenSource)
        if bool(((sources < lo) | (sources > hi)).any()):
            raise ValueError(f"sources must hold TokenSource values in [{int(lo)}, {int(hi)}]")
        if ewma_logprobs is None and bool((sources == TokenSource.EWMA).any()):
            raise ValueError("sources marks tokens as EWMA but ewma_logprobs is None")

"""The settings of one run: which arm supplies the old log-probs, the staleness, the thresholds and the task.

Every arm shares the same thresholds; only where the proximal log-probs come from differs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Arm = Literal[
    "sync", "recompute", "bypass", "loglinear",
    "exact-snapshot", "exact-follower", "exact-barrier", "ewma", "adaptive",
]  # fmt: skip
ARMS: tuple[str, ...] = Arm.__args__  # type: ignore[attr-defined]
EXACT_ARMS = ("exact-snapshot", "exact-follower", "exact-barrier")
"""The paper's three exact strategies: identical old log-probs, different system costs."""
Setting = Literal["default", "aggressive"]
RolloutEngineName = Literal["torch", "vllm"]
VLLM_ATTENTION_HEADS = 2
"""The policy's attention heads with the vLLM engine: head size 64 / 2 = 32, the smallest vLLM's CPU kernels take."""

# Learning rate and optimiser steps per version of each setting; "aggressive" moves the policy further
# per version, so staleness costs more.
SETTINGS: dict[str, tuple[float, int]] = {"default": (1e-3, 1), "aggressive": (3e-3, 4)}


class RunConfig(BaseModel):
    """One cell of the grid."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    arm: Arm
    """Where the proximal ("old") log-probs come from."""
    staleness: int = Field(1, ge=0, le=32)
    """k: a rollout started at version s is consumed by the trainer at version s + k (0 only for sync)."""
    window: tuple[float, float] = (0.8, 1.25)
    """Discrepancy mask window [lo, hi] on π_prox/μ, the same in every arm."""
    seed: int = Field(0, ge=0)
    """Seeds the model, the prompts and the sampling."""
    versions: int = Field(100, ge=2)
    """Trainer versions (optimiser rounds) in the run."""
    setting: Setting = "default"
    """default, or aggressive (larger learning rate, several optimiser steps per version)."""
    turns: Literal[1, 2] = 1
    """1: reverse one string; 2: the environment answers after the first turn and the policy continues."""
    digits: int = Field(5, ge=2, le=9)
    """Length of each digit string to reverse."""
    alphabet: int = Field(10, ge=2, le=10)
    """Digits the strings are drawn from (0 .. alphabet−1)."""
    warmstart_steps: int = Field(25, ge=0)
    """Supervised steps on reversal demonstrations before version 0: the "pretrained" policy RL starts
    from (a random tiny model gets almost no reward signal from reversal)."""
    prompts_per_version: int = Field(4, ge=1)
    """Distinct prompts per trainer batch."""
    group_size: int = Field(8, ge=2)
    """Samples per prompt; GRPO advantages are normalised within a group."""
    eval_prompts: int = Field(64, ge=1)
    """Fixed held-out prompts, decoded greedily after every version."""
    hidden_size: int = Field(64, ge=16)
    """Width of the tiny Qwen2 policy."""
    layers: int = Field(2, ge=1)
    """Depth of the tiny Qwen2 policy."""
    attention_heads: int = Field(4, ge=1)
    """Attention heads of the tiny Qwen2 policy (key/value heads: 2, or 1 with one head). 2 with the vLLM
    engine: its CPU attention kernels need a head size of at least 32 (64 / 4 = 16 is not one)."""
    lr: float | None = Field(None, gt=0)
    """AdamW learning rate; None takes the setting's."""
    updates_per_version: int | None = Field(None, ge=1)
    """Optimiser steps on each batch before publishing; None takes the setting's."""
    logit_noise: float = Field(0.05, ge=0)
    """σ of Gaussian noise added to the rollout engine's bf16 logits: the train–inference discrepancy
    (torch engine only; 0 with the vLLM engine, whose discrepancy is its own)."""
    rollout_engine: RolloutEngineName = "torch"
    """torch: the emulated engine (bf16-rounded weights computed in fp32, plus logit noise); vllm: the
    project's vLLM adapter over a real vLLM engine that loads each published version (`vllm_engine.py`)."""
    vllm_dtype: Literal["bfloat16", "float32"] = "bfloat16"
    """The vLLM engine's dtype. bf16, as rollout engines commonly run: in fp32 vLLM matches the trainer's
    forward to ~1e-7 and there is no discrepancy to correct."""
    clip_eps: float = Field(0.2, gt=0, lt=1)
    """PPO clip ε on π_θ/π_prox, both sides."""
    is_cap: float = Field(2.0, gt=0)
    """Truncation of the discrepancy weight π_prox/μ."""
    ewma_beta: float | None = Field(None, gt=0, lt=1)
    """EWMA decay of the service's approximate route; None puts its centre of mass β/(1−β) at the mean
    staleness of the tokens, (k+1)/2 versions."""
    latency_budget_s: float = Field(1.0, gt=0)
    """Adaptive route: exact old log-probs only when their predicted wait fits this budget."""
    ewma_tolerance: float | None = Field(None, gt=0)
    """Adaptive route: EWMA is used while its spot-checked mean |error| stays at or below this; None
    takes a tenth of the narrower side of the mask window in log space."""
    spot_check_sequences: int = Field(8, ge=1)
    """Adaptive route: sequences per batch whose EWMA answer the service spot-checks against the exact version."""
    metrics_sequences: int = Field(4, ge=1)
    """Sequences per batch on which the EWMA error is measured for the report (outside the timings)."""

    @model_validator(mode="before")
    @classmethod
    def _vllm_defaults(cls, data):
        # The noise emulates an engine mismatch; a real engine brings its own, so it defaults to 0 there.
        # Two heads: the head size vLLM's CPU kernels need (both may still be given explicitly).
        if isinstance(data, dict) and data.get("rollout_engine") == "vllm":
            data = {"logit_noise": 0.0, "attention_heads": VLLM_ATTENTION_HEADS, **data}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        lo, hi = self.window
        if not 0 < lo < 1 < hi:
            raise ValueError(f"window must satisfy 0 < lo < 1 < hi, got {self.window}")
        if (self.arm == "sync") != (self.staleness == 0):
            raise ValueError("staleness 0 is the sync arm and only it; asynchronous arms need k >= 1")
        if self.rollout_engine == "vllm" and self.logit_noise:
            raise ValueError("logit_noise applies to the torch rollout engine only; the vLLM engine adds none")
        if self.rollout_engine == "torch" and self.vllm_dtype != "bfloat16":
            raise ValueError("vllm_dtype applies to the vLLM rollout engine only")
        if self.hidden_size % self.attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of attention_heads {self.attention_heads}")
        return self

    def record_args(self) -> dict:
        """The arguments as result files hold them. Fields added after the first grid are left out at their
        torch-engine defaults, so records (and the grid's "already written" check) stay as they were."""
        args = self.model_dump(mode="json")
        if self.rollout_engine == "torch":
            del args["rollout_engine"], args["vllm_dtype"]
        if self.attention_heads == 4:
            del args["attention_heads"]
        return args

    @property
    def effective_lr(self) -> float:
        return self.lr if self.lr is not None else SETTINGS[self.setting][0]

    @property
    def effective_updates(self) -> int:
        return self.updates_per_version if self.updates_per_version is not None else SETTINGS[self.setting][1]

    @property
    def effective_beta(self) -> float:
        if self.ewma_beta is not None:
            return self.ewma_beta
        age = (max(self.staleness, 1) + 1) / 2  # mean staleness of a partial rollout's tokens
        return age / (1 + age)

    @property
    def effective_tolerance(self) -> float:
        import math

        if self.ewma_tolerance is not None:
            return self.ewma_tolerance
        lo, hi = self.window
        return 0.1 * min(-math.log(lo), math.log(hi))

    def file_name(self) -> str:
        lo, hi = self.window
        return f"{self.arm}-k{self.staleness}-{lo:g}_{hi:g}-s{self.seed}.json"

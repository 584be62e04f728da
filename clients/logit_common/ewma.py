"""Bias-corrected EWMA of weights, the proximal policy of PPO-EWMA (Hilton, Cobbe & Schulman 2021): the
arithmetic on plain tensor dicts, shared by the trainer-side `logit_client.ewma.WeightEWMA` and the
service's EWMA track. It does not decide when to fold: the trainer folds after each optimiser step, the
service per published version.

The average after folding θ_1 … θ_n (arXiv 2110.00641, PPO-EWMA; openai/ppo-ewma `EwmaModel`) is

    θ̄_n = Σ_i β^{n−i} θ_i / Σ_i β^{n−i} = S_n / Z_n,   S_n = β S_{n−1} + θ_n,   Z_n = β Z_{n−1} + 1.

Dividing by Z_n, not by the limit 1/(1−β), is the bias correction: θ̄_1 = θ_1 exactly, with no pull
towards a zero initial value. The centre of mass of the weights β^{n−i} sits β/(1−β) folds back, so a
target age of a versions gives β = a/(1+a).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from logit_common.extras import missing_extra

try:
    import torch
except ModuleNotFoundError as e:
    raise missing_extra(e, extra="publish", needed_for="the EWMA of weights") from e

__all__ = ["DebiasedEWMA", "ewma_beta_from_age"]


def ewma_beta_from_age(age_versions: float) -> float:
    """β whose EWMA centre of mass β/(1−β) lies `age_versions` folds back, i.e. β = age/(1+age)."""
    if not age_versions > 0:
        raise ValueError(f"age_versions must be > 0, got {age_versions}")
    return age_versions / (1.0 + age_versions)


def _check_beta(beta: float) -> float:
    if not 0.0 < beta < 1.0:
        raise ValueError(f"beta must lie in (0, 1), got {beta}")
    return float(beta)


class DebiasedEWMA:
    """Running S (unnormalised weighted sum per tensor) and Z (sum of weights); the average is S/Z.

    Accumulators are kept in `accumulate_dtype` (float32 by default, float64 on request) whatever the
    dtype of the folded tensors, so bf16 weights do not lose the small β-scaled increments.
    """

    def __init__(self, beta: float, *, accumulate_dtype: torch.dtype = torch.float32) -> None:
        if not accumulate_dtype.is_floating_point:
            raise ValueError(f"accumulate_dtype must be floating point, got {accumulate_dtype}")
        self.beta = _check_beta(beta)
        self.accumulate_dtype = accumulate_dtype
        self._sums: dict[str, torch.Tensor] = {}
        self._weight_sum = 0.0
        self._num_folded = 0

    @property
    def weight_sum(self) -> float:
        """Z_n = Σ_i β^{n−i}; it tends to 1/(1−β)."""
        return self._weight_sum

    @property
    def num_folded(self) -> int:
        """How many states have been folded in."""
        return self._num_folded

    @torch.no_grad()
    def fold(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """S ← β S + θ and Z ← β Z + 1; the first fold fixes the keys, shapes and devices."""
        if self._num_folded == 0:
            for name, tensor in state_dict.items():
                if not tensor.is_floating_point():
                    raise ValueError(f"{name} is {tensor.dtype}; only floating-point tensors can be averaged")
            self._sums = {name: t.detach().to(self.accumulate_dtype, copy=True) for name, t in state_dict.items()}
        else:
            if state_dict.keys() != self._sums.keys():
                missing = sorted(self._sums.keys() - state_dict.keys())
                extra = sorted(state_dict.keys() - self._sums.keys())
                raise ValueError(f"fold keys differ from the first fold: missing {missing}, unexpected {extra}")
            for name, tensor in state_dict.items():
                acc = self._sums[name]
                if tensor.shape != acc.shape:
                    raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {tuple(acc.shape)}")
                acc.mul_(self.beta).add_(tensor.detach().to(device=acc.device, dtype=acc.dtype))
        self._weight_sum = self.beta * self._weight_sum + 1.0
        self._num_folded += 1

    @torch.no_grad()
    def average(self) -> dict[str, torch.Tensor]:
        """θ̄ = S/Z per tensor, in the accumulator dtype."""
        if self._num_folded == 0:
            raise RuntimeError("nothing folded yet: the EWMA has no average")
        return {name: acc / self._weight_sum for name, acc in self._sums.items()}

    def average_of(self, name: str) -> torch.Tensor:
        """θ̄ of one tensor, so callers can stream the average without materialising all of it."""
        if self._num_folded == 0:
            raise RuntimeError("nothing folded yet: the EWMA has no average")
        return self._sums[name] / self._weight_sum

    def state(self) -> dict[str, Any]:
        """Everything needed to resume: β, S, Z and the fold count (S tensors are cloned)."""
        return {
            "beta": self.beta,
            "accumulate_dtype": str(self.accumulate_dtype).removeprefix("torch."),
            "weight_sum": self._weight_sum,
            "num_folded": self._num_folded,
            "sums": {name: acc.clone() for name, acc in self._sums.items()},
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> DebiasedEWMA:
        """Inverse of `state()`."""
        dtype = getattr(torch, str(state["accumulate_dtype"]), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown accumulate_dtype {state['accumulate_dtype']!r}")
        ewma = cls(float(state["beta"]), accumulate_dtype=dtype)
        num_folded, weight_sum = int(state["num_folded"]), float(state["weight_sum"])
        if (num_folded == 0) != (weight_sum == 0.0) or num_folded < 0 or weight_sum < 0:
            raise ValueError(f"inconsistent EWMA state: num_folded={num_folded}, weight_sum={weight_sum}")
        ewma._sums = {name: t.detach().to(dtype, copy=True) for name, t in state["sums"].items()}
        ewma._weight_sum, ewma._num_folded = weight_sum, num_folded
        return ewma

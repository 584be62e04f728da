"""Bias-corrected EWMA of weights, the proximal policy of PPO-EWMA (Hilton, Cobbe & Schulman 2021).

Owns the averaging math (`DebiasedEWMA`, on plain tensor dicts, so the service's EWMA track can reuse
it) and the in-trainer helper `WeightEWMA` for trainers that keep the proximal policy in process. It does
not decide when to fold: the trainer calls `update` after each optimiser step, the service per version.

The average after folding θ_1 … θ_n (arXiv 2110.00641, PPO-EWMA; openai/ppo-ewma `EwmaModel`) is

    θ̄_n = Σ_i β^{n−i} θ_i / Σ_i β^{n−i} = S_n / Z_n,   S_n = β S_{n−1} + θ_n,   Z_n = β Z_{n−1} + 1.

Dividing by Z_n, not by the limit 1/(1−β), is the bias correction: θ̄_1 = θ_1 exactly, with no pull
towards a zero initial value. The centre of mass of the weights β^{n−i} sits β/(1−β) folds back, so a
target age of a versions gives β = a/(1+a).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["DebiasedEWMA", "WeightEWMA", "ewma_beta_from_age"]


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


def _floating_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Floating-point parameters and buffers by name; tied tensors appear once (named_* de-duplicate).

    Integer buffers (e.g. BatchNorm's step counter) are left out: averaging a counter has no meaning.
    """
    tensors = dict(module.named_parameters())
    tensors.update(module.named_buffers())
    return {name: t for name, t in tensors.items() if t.is_floating_point()}


class WeightEWMA:
    """PPO-EWMA's proximal network for a trainer: the debiased EWMA of a module's weights.

    Construction folds the module's current weights (θ̄ = θ_0, as openai/ppo-ewma's `EwmaModel` starts);
    call `update(module)` after each optimiser step. Exactly one of `beta` and `target_age_versions`.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        beta: float | None = None,
        target_age_versions: float | None = None,
        accumulate_dtype: torch.dtype = torch.float32,
    ) -> None:
        if (beta is None) == (target_age_versions is None):
            raise ValueError("give exactly one of beta and target_age_versions")
        beta = ewma_beta_from_age(target_age_versions) if beta is None else beta
        self.ewma = DebiasedEWMA(beta, accumulate_dtype=accumulate_dtype)
        tensors = _floating_tensors(module)
        self._dtypes = {name: t.dtype for name, t in tensors.items()}
        self.ewma.fold(tensors)
        self.num_updates = 0

    @property
    def beta(self) -> float:
        return self.ewma.beta

    def update(self, module: nn.Module) -> None:
        """Fold the module's current weights in; call once after each optimiser step."""
        self.ewma.fold(_floating_tensors(module))
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Averaged floating parameters and buffers, cast to their own dtypes (load with strict=False)."""
        return {name: avg.to(self._dtypes[name]) for name, avg in self.ewma.average().items()}

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Write the average into `module`, which must have the architecture of the tracked one."""
        targets = _floating_tensors(module)
        if targets.keys() != self._dtypes.keys():
            missing = sorted(self._dtypes.keys() - targets.keys())
            extra = sorted(targets.keys() - self._dtypes.keys())
            raise ValueError(f"module does not match the tracked one: missing {missing}, unexpected {extra}")
        for name, target in targets.items():
            target.copy_(self.ewma.average_of(name))

    @contextlib.contextmanager
    def swapped_into(self, module: nn.Module) -> Iterator[nn.Module]:
        """Run `module` with the averaged weights inside the block; its own weights come back on exit.

        The swap is in place, so parameter identities (and the optimiser's references) never change;
        it holds one extra copy of the floating weights for the duration.
        """
        originals = {name: t.detach().clone() for name, t in _floating_tensors(module).items()}
        try:
            self.copy_to(module)
            yield module
        finally:
            with torch.no_grad():
                targets = _floating_tensors(module)
                for name, original in originals.items():
                    targets[name].copy_(original)

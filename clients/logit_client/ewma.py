"""The in-trainer proximal policy of PPO-EWMA (Hilton, Cobbe & Schulman 2021): `WeightEWMA` keeps the
debiased EWMA of a module's weights for trainers that hold the proximal policy in process.

The averaging arithmetic (`DebiasedEWMA`, θ̄_n = S_n / Z_n) lives in `logit_common.ewma`, shared with
the service's EWMA track; it is re-exported here. The trainer calls `update` after each optimiser step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from logit_common.ewma import DebiasedEWMA, ewma_beta_from_age  # torch, or an error naming the extra

import torch
from torch import nn

__all__ = ["DebiasedEWMA", "WeightEWMA", "ewma_beta_from_age"]


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

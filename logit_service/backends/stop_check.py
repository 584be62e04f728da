"""Stops a forward between layers once the caller no longer wants its answer.

A long sequence is one micro-batch, so checks between micro-batches alone let it run past its
deadline. Pre-hooks on every block of the model's layer lists raise before the next block runs; they
read nothing from the tensors, so a forward that is not stopped computes exactly the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


class Stopped(Exception):
    """Raised inside a forward, or between micro-batches, when the caller asked to stop."""


def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The members of every ModuleList: decoder layers, and experts inside MoE layers."""
    return [child for module in model.modules() if isinstance(module, torch.nn.ModuleList) for child in module]


@contextmanager
def stop_between_layers(model: torch.nn.Module, should_stop: Callable[[], bool] | None) -> Iterator[None]:
    if should_stop is None:
        yield
        return

    def check(_module, _args) -> None:
        if should_stop():
            raise Stopped()

    handles = [block.register_forward_pre_hook(check) for block in _blocks(model)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()

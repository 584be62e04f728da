"""The checks between layers: they stop a forward before the next block, and change nothing otherwise."""

from __future__ import annotations

import pytest
import torch

from logit_service.backends.stop_check import Stopped, stop_between_layers


class _Expert(torch.nn.Module):
    def __init__(self, ran: list[str], name: str) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)
        self.ran, self.name = ran, name

    def forward(self, x):
        self.ran.append(self.name)
        return self.linear(x)


class _Layer(torch.nn.Module):
    """A decoder layer with experts in a ModuleList of its own, as MoE layers hold them."""

    def __init__(self, ran: list[str], index: int) -> None:
        super().__init__()
        self.experts = torch.nn.ModuleList([_Expert(ran, f"layer {index} expert {e}") for e in range(2)])
        self.ran, self.index = ran, index

    def forward(self, x):
        self.ran.append(f"layer {self.index}")
        return sum(expert(x) for expert in self.experts)


class _Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ran: list[str] = []
        self.layers = torch.nn.ModuleList([_Layer(self.ran, i) for i in range(3)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(module._forward_pre_hooks) for module in model.modules())


@pytest.fixture
def model() -> _Model:
    torch.manual_seed(0)
    return _Model()


def test_a_forward_never_stopped_is_the_same_forward_and_checks_every_block(model):
    x = torch.randn(2, 4)
    expected = model(x)
    model.ran.clear()
    checks: list[int] = []
    with stop_between_layers(model, lambda: checks.append(1) and False):
        assert _hook_count(model) == 9  # 3 layers and 2 experts in each
        got = model(x)
    assert torch.equal(got, expected)
    assert len(checks) == 9  # once before each block: every layer and every expert
    assert len(model.ran) == 9


def test_a_stop_asked_for_mid_forward_raises_before_the_next_block_runs(model):
    asked = {"stop": False}

    def should_stop() -> bool:
        if model.ran and model.ran[-1] == "layer 0 expert 1":
            asked["stop"] = True
        return asked["stop"]

    with stop_between_layers(model, should_stop), pytest.raises(Stopped):
        model(torch.randn(1, 4))
    assert model.ran == ["layer 0", "layer 0 expert 0", "layer 0 expert 1"]


def test_the_checks_are_gone_after_the_block_even_when_it_raised(model):
    with pytest.raises(Stopped):
        with stop_between_layers(model, lambda: True):
            model(torch.randn(1, 4))
    assert _hook_count(model) == 0
    with stop_between_layers(model, lambda: False):
        pass
    assert _hook_count(model) == 0
    model(torch.randn(1, 4))  # no check left behind to stop it


def test_without_a_stop_condition_nothing_is_hooked(model):
    with stop_between_layers(model, None):
        assert _hook_count(model) == 0
        model(torch.randn(1, 4))
    assert len(model.ran) == 9

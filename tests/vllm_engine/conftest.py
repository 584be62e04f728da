"""Fixtures for the tests that drive a real vLLM engine (run by `make test-vllm`, in .venv-vllm).

Without vllm installed (the ordinary `make test` environment) nothing here is collected. An engine
takes ~20-30 s to start on CPU, so engines are shared per module and shut down at its end.
Versions are a tiny random-weight Qwen2 built from a config and trained a few real steps: no downloads.
"""

from __future__ import annotations

import importlib.util

import pytest

from tests.vllm_engine.helpers import NUM_VERSIONS, VOCAB, Versions, tiny_config

_spec = importlib.util.find_spec("vllm")
if _spec is None or _spec.origin is None:  # not installed (a namespace match is some stray directory)
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session")
def versions(tmp_path_factory) -> Versions:
    import torch
    from transformers import AutoModelForCausalLM

    from logit_service.snapshots.writer import write_snapshot

    torch.manual_seed(0)
    config = tiny_config()
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(1)
    root = tmp_path_factory.mktemp("vllm-snapshots")
    states = []
    for version in range(NUM_VERSIONS):
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        states.append(state)
        write_snapshot(root, version, state, config.to_dict())
        batch = torch.randint(0, VOCAB, (4, 48), generator=generator)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return Versions(config=config.to_dict(), states=states, root=root)


_FIGURES: list[str] = []


@pytest.fixture
def report():
    """Records a measured figure; all are printed in the summary at the end of the run."""
    return _FIGURES.append


def pytest_terminal_summary(terminalreporter):
    if _FIGURES:
        terminalreporter.section("vLLM figures (measured)")
        for line in _FIGURES:
            terminalreporter.write_line(line)

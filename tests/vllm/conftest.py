"""Fixtures for the tests that drive a real vLLM engine (run by `make test-vllm`, in .venv-vllm).

Without vllm installed (the ordinary `make test` environment) nothing here is collected. An engine
takes ~20-30 s to start on CPU, so engines are shared per module and shut down at its end.
Versions are a tiny random-weight Qwen2 built from a config and trained a few real steps: no downloads.
"""

from __future__ import annotations

import gc
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import pytest

if importlib.util.find_spec("vllm") is None:
    collect_ignore_glob = ["test_*.py"]

VOCAB = 512
NUM_VERSIONS = 3


def tiny_config(vocab_size: int = VOCAB):
    from transformers import Qwen2Config

    # head_dim 64: a size every vLLM CPU attention kernel supports.
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        eos_token_id=None,
        bos_token_id=None,
    )
    config.architectures = ["Qwen2ForCausalLM"]  # vLLM picks its implementation by this name
    return config


@dataclass
class Versions:
    """State dicts of versions 0..n-1 of one model and their snapshots under `root`."""

    config: dict
    states: list
    root: Path

    def path(self, version: int) -> Path:
        return self.root / f"v{version:08d}"

    def model_at(self, version: int, dtype=None):
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(tiny_config(), dtype=torch.float32)
        model.load_state_dict(self.states[version])
        return model.to(dtype or torch.float32).eval()

    def reference(self, version: int, token_ids, temperature: float = 1.0):
        """float64 numpy log-probs of token t given tokens < t (NaN at 0), fp32 forward, as a trainer runs it."""
        import numpy as np
        import torch

        ids = torch.as_tensor(np.asarray(token_ids), dtype=torch.long)[None]
        with torch.no_grad():
            logits = self.model_at(version)(input_ids=ids).logits[0].float() / temperature
        logprobs = torch.log_softmax(logits[:-1], dim=-1).gather(-1, ids[0, 1:, None])[:, 0]
        return np.concatenate([[np.nan], logprobs.double().numpy()])


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


ENGINE_KWARGS = dict(enforce_eager=True, max_model_len=512, max_num_seqs=16)


def shutdown(engine) -> None:
    """Stops a vllm.LLM or AsyncLLM and its engine-core process, so the next module starts clean."""
    target = getattr(engine, "llm_engine", engine)
    stop = getattr(target, "shutdown", None) or getattr(getattr(target, "engine_core", None), "shutdown", None)
    if stop is not None:
        stop()
    del engine, target
    gc.collect()

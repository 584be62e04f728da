"""What the vLLM-engine tests share: the tiny model's config, its trained versions, engine settings."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


VOCAB = 512
NUM_VERSIONS = 3


def tiny_config(vocab_size: int = VOCAB):
    from transformers import Qwen2Config

    # head_dim 64: a size every vLLM CPU attention kernel supports. No `architectures`, as `from_config`
    # leaves it: the adapter and the backend fill it in for vLLM.
    return Qwen2Config(
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


ENGINE_KWARGS: dict = dict(enforce_eager=True, max_model_len=512, max_num_seqs=16)
if _cuda_available():
    # Up to two engines live at once (the reload test's fresh one beside the shared one).
    ENGINE_KWARGS["gpu_memory_utilization"] = 0.3


def shutdown(engine) -> None:
    """Stops a vllm.LLM or AsyncLLM and its engine-core process, so the next module starts clean."""
    target = getattr(engine, "llm_engine", engine)
    stop = getattr(target, "shutdown", None) or getattr(getattr(target, "engine_core", None), "shutdown", None)
    if stop is not None:
        stop()
    del engine, target
    gc.collect()

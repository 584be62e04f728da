"""Tiny random-weight causal LMs built from a config (nothing is downloaded), and the reference forward.

Shared by the demo, the tests and the benchmarks, so all three check against the same definition.
"""

from __future__ import annotations

import torch


def tiny_qwen2_config(
    vocab_size: int = 512, hidden_size: int = 64, layers: int = 2, max_positions: int = 2048, heads: int = 4, kv_heads: int = 2
):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
    )


def build_tiny_model(seed: int = 0, **config_kwargs) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_qwen2_config(**config_kwargs), dtype=torch.float32).eval()


def model_config_dict(model: torch.nn.Module) -> dict:
    return model.config.to_dict()


@torch.no_grad()
def reference_logprobs(model: torch.nn.Module, token_ids, temperature: float = 1.0) -> torch.Tensor:
    """The direct forward a trainer would run: full logits, float32 log-softmax, gather.

    Returns [len(token_ids)] with position 0 NaN (nothing predicts the first token).
    """
    ids = torch.as_tensor(token_ids, dtype=torch.long)[None]
    logits = model(input_ids=ids, use_cache=False).logits[0].float() / temperature
    logprobs = torch.log_softmax(logits[:-1], dim=-1).gather(1, ids[0, 1:, None]).squeeze(1)
    return torch.cat([torch.full((1,), float("nan")), logprobs])


def sgd_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, token_ids: torch.Tensor) -> float:
    """One real language-modelling update on a batch [B, L]; returns the loss."""
    model.train()
    out = model(input_ids=token_ids, labels=token_ids, use_cache=False)
    optimizer.zero_grad()
    out.loss.backward()
    optimizer.step()
    model.eval()
    return float(out.loss.detach())

"""Exact, memory-lean token log-probs from hidden states.

log p(y_t) = z_{t-1}[y_t] − logsumexp(z_{t-1}), with z = lm_head(h) / T computed a chunk of rows at a
time and upcast to float32 before the normaliser (a bf16 normaliser is off by up to ~0.07 nats).
A [tokens, vocab] matrix for the whole batch is never built.
"""

from __future__ import annotations

import torch


def gather_logprobs(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    lm_head: torch.nn.Module,
    *,
    temperature: float = 1.0,
    chunk_tokens: int = 1024,
    final_logit_softcapping: float | None = None,
) -> torch.Tensor:
    """hidden [N, H] (the states that predict each target), targets [N] → float32 log-probs [N]."""
    out = torch.empty(targets.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, targets.shape[0], chunk_tokens):
        stop = min(start + chunk_tokens, targets.shape[0])
        logits = lm_head(hidden[start:stop]).float()
        if final_logit_softcapping is not None:
            logits = torch.tanh(logits / final_logit_softcapping) * final_logit_softcapping
        if temperature != 1.0:
            logits = logits / temperature
        picked = logits.gather(1, targets[start:stop, None]).squeeze(1)
        out[start:stop] = picked - torch.logsumexp(logits, dim=-1)
    return out

"""Exact, memory-lean token log-probs from hidden states.

log p(y_t) = z_{t-1}[y_t] − logsumexp(z_{t-1}), with z = head(h) / T computed a chunk of rows at a
time and upcast to float32 before the normaliser (a bf16 normaliser is off by up to ~0.07 nats).
A [tokens, vocab] matrix for the whole batch is never built.

`head` must be everything the model's own forward does to a hidden state to make its logits: the output
embeddings and any transform after them (see `known_head`); the probe in `probe.py` checks that it is.
"""

from __future__ import annotations

from typing import Callable

import torch

Head = Callable[[torch.Tensor], torch.Tensor]


def normalised(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits [N, V] in the model's dtype, targets [N] → float32 log-probs [N] (upcast, then divide by T)."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    picked = logits.gather(1, targets[:, None]).squeeze(1)
    return picked - torch.logsumexp(logits, dim=-1)


def gather_logprobs(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head: Head,
    *,
    temperature: float = 1.0,
    chunk_tokens: int = 1024,
    final_logit_softcapping: float | None = None,
) -> torch.Tensor:
    """hidden [N, H] (the states that predict each target), targets [N] → float32 log-probs [N].

    `final_logit_softcapping` caps the float32 logits of a bare head (kept for callers that pass one
    separately); a head from `known_head` already applies the model's own cap in the model's dtype.
    """
    out = torch.empty(targets.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, targets.shape[0], chunk_tokens):
        stop = min(start + chunk_tokens, targets.shape[0])
        logits = head(hidden[start:stop])
        if final_logit_softcapping is not None:
            logits = torch.tanh(logits.float() / final_logit_softcapping) * final_logit_softcapping
        out[start:stop] = normalised(logits, targets[start:stop], temperature)
    return out


def known_head(model: torch.nn.Module) -> Head:
    """The output embeddings followed by the post-head transforms transformers models are known to
    apply, in the order and dtype their forwards apply them (so bf16 rounding matches too).

    Known: Gemma-style `final_logit_softcapping` (tanh cap), Cohere's `logit_scale` (multiply),
    Granite's `logits_scaling` (divide). Anything else a forward does is caught by the probe.
    """
    lm_head = model.get_output_embeddings()
    if lm_head is None:
        raise ValueError(f"{type(model).__name__} exposes no output embeddings")
    config = model.config
    softcap = getattr(config, "final_logit_softcapping", None)
    logit_scale = getattr(config, "logit_scale", None)
    logits_scaling = getattr(config, "logits_scaling", None)

    def head(hidden: torch.Tensor) -> torch.Tensor:
        logits = lm_head(hidden)
        if isinstance(logit_scale, (int, float)):
            logits = logits * logit_scale
        if isinstance(logits_scaling, (int, float)):
            logits = logits / logits_scaling
        if softcap is not None:
            logits = logits / softcap
            logits = torch.tanh(logits)
            logits = logits * softcap
        return logits

    return head

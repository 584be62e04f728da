"""The default backend: a transformers causal LM with training-side numerics, one version resident.

It owns the model and its resident weights; which version to load and when is the engine's call.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from logit_service.backends.logprobs import gather_logprobs
from logit_service.backends.stop_check import Stopped, stop_between_layers

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ScoreItem:
    """One sequence cut to the last position needed, and the positions to score in it."""

    token_ids: np.ndarray  # int64 [len]
    positions: np.ndarray  # int64 [n], each in [1, len)


def build_model(model_config: dict[str, Any], *, dtype: str, device: str, attn_implementation: str) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    config_dict = dict(model_config)
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=_DTYPES[dtype], attn_implementation=attn_implementation)
    return model.to(device).eval()


class TorchBackend:
    name = "torch"

    def __init__(
        self,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        attn_implementation: str = "sdpa",
        max_batch_tokens: int = 16384,
        logprob_chunk_tokens: int = 1024,
        batch_invariant: bool = True,
    ) -> None:
        self.dtype = dtype
        self.device = torch.device(device)
        self.attn_implementation = attn_implementation
        self.max_batch_tokens = max_batch_tokens
        self.logprob_chunk_tokens = logprob_chunk_tokens
        self.batch_invariant = batch_invariant
        self.model: torch.nn.Module | None = None
        self.resident_key: str | None = None
        self.resident_digest: str | None = None
        self.swaps = 0  # weight copies into the model since start, and their seconds (for the metrics)
        self.swap_seconds = 0.0

    @property
    def vocab_size(self) -> int:
        assert self.model is not None
        return int(self.model.config.vocab_size)

    def ensure_model(self, model_config: dict[str, Any]) -> None:
        if self.model is None:
            self.model = build_model(
                model_config, dtype=self.dtype, device=str(self.device), attn_implementation=self.attn_implementation
            )
            log.info("built %s with %d parameters", type(self.model).__name__, sum(p.numel() for p in self.model.parameters()))

    def load(self, key: str, digest: str, state_dict: dict[str, torch.Tensor]) -> None:
        """Makes these weights resident (copied into the model's own storage, cast to its dtype)."""
        assert self.model is not None, "ensure_model first"
        if self.resident_key == key and self.resident_digest == digest:
            return
        self.resident_key = self.resident_digest = None  # a failed copy must not leave a stale label
        started = time.perf_counter()
        missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
        self.swaps += 1
        self.swap_seconds += time.perf_counter() - started
        tied = {k for k in missing if k.endswith("lm_head.weight") and getattr(self.model.config, "tie_word_embeddings", False)}
        if set(missing) - tied or unexpected:
            raise ValueError(f"snapshot does not fit the model: missing {sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}")
        self.resident_key, self.resident_digest = key, digest

    def _micro_batches(self, order: list[int], items: list[ScoreItem]) -> list[list[int]]:
        """Longest first; a batch's padded size (count × longest) stays within max_batch_tokens.

        Batch-invariant mode forwards each sequence on its own: padding changes the reduction order in
        attention, and even equal-length neighbours change the row count of every matmul, which moves
        fp32 results by ~1e-7. Alone, an answer never depends on what else was in the request.
        """
        batches: list[list[int]] = []
        current: list[int] = []
        for idx in order:
            length = len(items[idx].token_ids)
            longest = len(items[current[0]].token_ids) if current else length
            full = (len(current) + 1) * longest > self.max_batch_tokens
            if current and (full or self.batch_invariant):
                batches.append(current)
                current = []
            current.append(idx)
        if current:
            batches.append(current)
        return batches

    @torch.inference_mode()
    def score(self, items: list[ScoreItem], *, temperature: float = 1.0, should_stop=None) -> list[np.ndarray]:
        """float32 log-probs per item, aligned with item.positions. `should_stop()` is polled between
        micro-batches and between layers, so a cancelled request stops using the model mid-forward."""
        assert self.model is not None
        results: list[np.ndarray] = [np.empty(0, np.float32)] * len(items)
        order = sorted(range(len(items)), key=lambda i: -len(items[i].token_ids))
        base = self.model.base_model
        lm_head = self.model.get_output_embeddings()
        softcap = getattr(self.model.config, "final_logit_softcapping", None)
        for batch in self._micro_batches(order, items):
            if should_stop is not None and should_stop():
                raise Stopped()
            longest = len(items[batch[0]].token_ids)
            ids = torch.zeros(len(batch), longest, dtype=torch.long)
            mask = torch.zeros(len(batch), longest, dtype=torch.long)
            rows, cols, targets = [], [], []
            for b, idx in enumerate(batch):
                item = items[idx]
                ids[b, : len(item.token_ids)] = torch.from_numpy(item.token_ids)
                mask[b, : len(item.token_ids)] = 1
                rows.append(np.full(len(item.positions), b))
                cols.append(item.positions - 1)  # the state at t−1 predicts token t
                targets.append(item.token_ids[item.positions])
            with stop_between_layers(self.model, should_stop):
                hidden = base(
                    input_ids=ids.to(self.device), attention_mask=mask.to(self.device), use_cache=False
                ).last_hidden_state
            row_index = torch.from_numpy(np.concatenate(rows)).to(self.device)
            col_index = torch.from_numpy(np.concatenate(cols)).to(self.device)
            picked = hidden[row_index, col_index]
            logprobs = gather_logprobs(
                picked,
                torch.from_numpy(np.concatenate(targets)).to(self.device),
                lm_head,
                temperature=temperature,
                chunk_tokens=self.logprob_chunk_tokens,
                final_logit_softcapping=softcap,
            ).cpu().numpy()
            offset = 0
            for idx in batch:
                n = len(items[idx].positions)
                results[idx] = logprobs[offset : offset + n]
                offset += n
        return results


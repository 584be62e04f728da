"""The ways a micro-batch's log-probs can be computed; `probe.py` decides which one a model may use.

- `lean`: the base model's hidden states, then the head (output embeddings and known post-head
  transforms) on only the scored rows, a chunk at a time. Cheapest; exact only where the head is all
  the model's forward does after its base model.
- `logits_to_keep`: the model's own forward, asked for logits at the scored positions only
  (transformers' `logits_to_keep` index tensor), a chunk of positions per forward.
- `sliced_head`: the model's own forward with the output embeddings' input cut to the scored positions
  by a pre-hook, for forwards without `logits_to_keep`; also a chunk of positions per forward.

Both fallbacks run whatever the model's forward does after its head and never build [T, V] for a
whole sequence, at the price of one base-model forward per chunk of positions.
"""

from __future__ import annotations

import inspect

import torch

from logit_service.backends.logprobs import gather_logprobs, known_head, normalised


class LeanPath:
    name = "lean"
    one_sequence_per_forward = False

    def __init__(self, model: torch.nn.Module, chunk_tokens: int) -> None:
        self.base = model.base_model
        self.head = known_head(model)
        self.chunk_tokens = chunk_tokens

    def logprobs(self, ids, mask, rows, cols, targets, temperature: float) -> torch.Tensor:
        """ids, mask [B, L]; rows, cols, targets [N]: the state at (row, col) predicts target → [N]."""
        hidden = self.base(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        return gather_logprobs(hidden[rows, cols], targets, self.head, temperature=temperature, chunk_tokens=self.chunk_tokens)

    def tile_logprobs(self, ids: torch.Tensor, rows: list[tuple[int, torch.Tensor, torch.Tensor]], temperature: float) -> list[torch.Tensor]:
        """ids [R, L], a fixed-shape tile (tiles.py); rows: (row, cols, targets) of each real row → [n] each.

        The head runs on each row's scored states alone, so its matmuls have the row counts the
        sequence would give them alone, whatever shares the tile.
        """
        hidden = self.tile_hidden(ids)
        return [
            gather_logprobs(hidden[b, cols], targets, self.head, temperature=temperature, chunk_tokens=self.chunk_tokens)
            for b, cols, targets in rows
        ]

    def tile_hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """The base model's last hidden states of a tile [R, L] → [R, L, H]; no mask (tiles.py)."""
        return self.base(input_ids=ids, use_cache=False).last_hidden_state


class _ModelForwardPath:
    """The model's own forward, one sequence at a time, for a chunk of positions per call."""

    one_sequence_per_forward = True

    def __init__(self, model: torch.nn.Module, chunk_tokens: int) -> None:
        self.model = model
        self.chunk_tokens = chunk_tokens

    def _chunk_logits(self, ids: torch.Tensor, mask: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def logprobs(self, ids, mask, rows, cols, targets, temperature: float) -> torch.Tensor:
        out = torch.empty(targets.shape[0], dtype=torch.float32, device=targets.device)
        for b in range(ids.shape[0]):
            (where,) = torch.nonzero(rows == b, as_tuple=True)
            length = int(mask[b].sum())
            for start in range(0, where.shape[0], self.chunk_tokens):
                chunk = where[start : start + self.chunk_tokens]
                logits = self._chunk_logits(ids[b : b + 1, :length], mask[b : b + 1, :length], cols[chunk])
                out[chunk] = normalised(logits, targets[chunk], temperature)
        return out


class LogitsToKeepPath(_ModelForwardPath):
    name = "logits_to_keep"

    @staticmethod
    def available(model: torch.nn.Module) -> bool:
        return "logits_to_keep" in inspect.signature(model.forward).parameters

    def _chunk_logits(self, ids, mask, cols):
        return self.model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=cols).logits[0]


class SlicedHeadPath(_ModelForwardPath):
    name = "sliced_head"

    @staticmethod
    def available(model: torch.nn.Module) -> bool:
        return model.get_output_embeddings() is not None

    def _chunk_logits(self, ids, mask, cols):
        def keep_scored_rows(module, args):
            return (args[0][:, cols],) + tuple(args[1:])

        handle = self.model.get_output_embeddings().register_forward_pre_hook(keep_scored_rows)
        try:
            logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        finally:
            handle.remove()
        return logits[0]


def candidate_paths(model: torch.nn.Module, chunk_tokens: int) -> list:
    """Cheapest first; the probe takes the first that agrees with the model's own forward."""
    paths: list = []
    if model.get_output_embeddings() is not None:
        paths.append(LeanPath(model, chunk_tokens))
    if LogitsToKeepPath.available(model):
        paths.append(LogitsToKeepPath(model, chunk_tokens))
    if SlicedHeadPath.available(model):
        paths.append(SlicedHeadPath(model, chunk_tokens))
    return paths

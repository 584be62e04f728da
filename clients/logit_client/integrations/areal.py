"""AReaL's rollout batches in, `prox_logp` out: the service as AReaL's recomputed proximal policy.

AReaL's layout (its RLVR workflow, then `concat_padded_tensors`): one row per sample, right-padded to the
longest, `input_ids` = prompt + output tokens, `attention_mask` (bool) over the real tokens, `loss_mask`
1 on output tokens, `versions` = -1 on the prompt and the inference engine's per-token `output_versions`
on the output. Padding holds `pad_value` (0) in every key, `versions` included, so padding is told apart
by the attention mask, never by a version. Packed batches (`pack_tensor_dict`) hold the same keys
flattened to [total_tokens] with `cu_seqlens` [batch + 1] in place of the attention mask.

AReaL's `compute_logp` answers in a shifted convention: position t holds the log-prob of token t + 1
(labels are `torch.roll(input_ids, -1)`), aligned with `torch.roll(loss_mask, -1)`. `prox_logp` is written
the same way, 0.0 wherever nothing was scored. AReaL is not imported: only its tensors are read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from logit_client import LogitClient, SequenceInput

from .prompt_response import UNSCORED_VERSION, as_numpy

PROX_LOGP_KEY = "prox_logp"


@dataclass(frozen=True)
class AReaLBatch:
    """The sequences to score of an AReaL batch and where each row starts in the (padded or packed) tensors."""

    sequences: list[SequenceInput]
    rows: list[int]
    offsets: list[int]
    """Where each sequence's token 0 sits: 0 in a padded row, `cu_seqlens[row]` in a packed batch."""
    packed: bool
    shape: tuple[int, ...]


def _rows(data: Mapping[str, Any]) -> tuple[bool, list[tuple[int, int]], tuple[int, ...]]:
    """(packed, [(start, length)] per sample in the flattened tensors, output shape)."""
    keys = data.keys()
    if "cu_seqlens" in keys:
        cu_seqlens = as_numpy(data["cu_seqlens"]).astype(np.int64)
        total = as_numpy(data["input_ids"]).shape[0]
        if cu_seqlens[0] != 0 or cu_seqlens[-1] != total or (np.diff(cu_seqlens) < 0).any():
            raise ValueError(f"cu_seqlens must rise from 0 to the {total} packed tokens, got {cu_seqlens.tolist()}")
        return True, [(int(s), int(e - s)) for s, e in zip(cu_seqlens[:-1], cu_seqlens[1:])], (total,)
    attention = as_numpy(data["attention_mask"]).astype(bool)
    lengths = attention.sum(axis=1)
    if not np.array_equal(attention, np.arange(attention.shape[1])[None, :] < lengths[:, None]):
        raise ValueError("attention_mask must be right-padded (AReaL pads every row at its end)")
    width = attention.shape[1]
    return False, [(row * width, int(n)) for row, n in enumerate(lengths)], attention.shape


def build_areal_batch(data: Mapping[str, Any], sample_ids: list[str] | None = None) -> AReaLBatch:
    """The sequences of an AReaL batch: positions with `loss_mask` 1 are scored under their `versions` tag."""
    packed, rows, shape = _rows(data)
    flat = {key: as_numpy(data[key]).reshape(-1) for key in ("input_ids", "loss_mask", "versions")}
    sequences, kept_rows, offsets = [], [], []
    for row, (start, length) in enumerate(rows):
        token_ids = flat["input_ids"][start : start + length]
        scored = flat["loss_mask"][start : start + length].astype(bool)
        tags = flat["versions"][start : start + length].astype(np.int64)
        if not scored.any():
            continue
        if (tags[scored] < 0).any():
            raise ValueError(f"row {row}: a loss_mask position has version -1; its generating version is unknown")
        versions = np.where(scored, tags, UNSCORED_VERSION)
        sample_id = sample_ids[row] if sample_ids is not None else str(row)
        sequences.append(SequenceInput.from_versions(token_ids, versions, sample_id=sample_id))
        kept_rows.append(row)
        offsets.append(start)
    return AReaLBatch(sequences, kept_rows, offsets, packed, shape)


def shifted_logprobs(batch: AReaLBatch, result: Any) -> np.ndarray:
    """float32 in the batch's shape: position t holds the served log-prob of token t + 1, 0.0 elsewhere."""
    out = np.zeros(int(np.prod(batch.shape)), dtype=np.float32)
    for offset, answer in zip(batch.offsets, result):
        mask = answer.mask
        values = np.where(mask, np.nan_to_num(answer.logprobs, nan=0.0), 0.0)
        # Token t (t >= 1 whenever scored) lands at t - 1: AReaL's roll(-1) convention.
        out[offset : offset + len(values) - 1] = values[1:]
    return out.reshape(batch.shape)


def score_areal_batch(
    client: LogitClient,
    data: dict[str, Any],
    *,
    temperature: float = 1.0,
    allow_ewma_fallback: bool = False,
    timeout_s: float | None = None,
    key: str = PROX_LOGP_KEY,
) -> np.ndarray:
    """Scores an AReaL batch and writes `data[key]` (a torch tensor on `input_ids`' device when it is one).

    Pass the temperature AReaL's `compute_logp` would get (the generation temperature). Returns the numpy
    array written.
    """
    batch = build_areal_batch(data)
    shifted = np.zeros(batch.shape, dtype=np.float32)
    if batch.sequences:
        result = client.score(
            batch.sequences, temperature=temperature, allow_ewma_fallback=allow_ewma_fallback, timeout_s=timeout_s
        )
        shifted = shifted_logprobs(batch, result)
    input_ids = data["input_ids"]
    if hasattr(input_ids, "device"):
        import torch  # AReaL's tensors are torch: answer in kind

        data[key] = torch.from_numpy(shifted).to(input_ids.device)
    else:
        data[key] = shifted
    return shifted

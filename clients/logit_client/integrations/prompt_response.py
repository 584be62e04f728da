"""The layout TRL and verl share: left-padded prompts beside right-padded responses, one row per sample.

Turns such rows, with a version per response token, into `SequenceInput`s (padding stripped, so the
service scores exactly the tokens the model attended to), and the answer back into [batch, response]
arrays aligned with the response tensor. Pure numpy: tensors are read through `as_numpy`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from logit_client import LogitClient, ScoreResult, SequenceInput

UNSCORED_VERSION = -1
"""The version tag of positions that are not scored: prompt, padding, tool output."""


def as_numpy(values: Any) -> np.ndarray:
    """A numpy array of a list, numpy array or torch tensor (on any device)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu()
    return np.asarray(values)


@dataclass(frozen=True)
class PromptResponseBatch:
    """The sequences to score of one batch, and where each sits in the padded tensors."""

    sequences: list[SequenceInput]
    rows: list[int]
    """The batch row of each sequence; rows with nothing to score are left out."""
    prompt_lengths: list[int]
    """Unpadded prompt length of each sequence: response position j is sequence position prompt_length + j."""
    batch_size: int
    response_width: int


@dataclass(frozen=True)
class ResponseScores:
    """The service's answer laid out like the response tensor: [batch, response_width]."""

    logprobs: np.ndarray
    """float32; 0.0 where nothing was scored (padding, tool output, prompt-only rows)."""
    sources: np.ndarray
    """uint8 TokenSource values; 0 (UNSPECIFIED) where nothing was scored."""
    served_versions: np.ndarray
    """int64 version whose weights answered; -1 where nothing was scored."""
    scored: np.ndarray
    """bool: the positions that were scored."""


def _prefix_lengths(mask: np.ndarray, what: str) -> np.ndarray:
    """Row lengths of a right-padded 0/1 mask; refuses a mask with holes (it would misalign positions)."""
    lengths = mask.sum(axis=1)
    expected = np.arange(mask.shape[1])[None, :] < lengths[:, None]
    if not np.array_equal(mask, expected):
        raise ValueError(f"{what} must be right-padded: ones first, then zeros, in every row")
    return lengths


def _suffix_lengths(mask: np.ndarray, what: str) -> np.ndarray:
    """Row lengths of a left-padded 0/1 mask; refuses a mask with holes."""
    lengths = mask.sum(axis=1)
    expected = np.arange(mask.shape[1])[None, :] >= (mask.shape[1] - lengths)[:, None]
    if not np.array_equal(mask, expected):
        raise ValueError(f"{what} must be left-padded: zeros first, then ones, in every row")
    return lengths


def response_version_grid(versions: Any, batch_size: int, response_width: int) -> np.ndarray:
    """[batch, response_width] int64 versions from one int, one per row ([batch]) or one per token."""
    grid = as_numpy(versions)
    if grid.ndim == 0:
        return np.full((batch_size, response_width), int(grid), dtype=np.int64)
    if grid.dtype.kind not in "iu":
        raise ValueError(f"versions must be integers, got dtype {grid.dtype}")
    if grid.shape == (batch_size,):
        return np.repeat(grid.astype(np.int64)[:, None], response_width, axis=1)
    if grid.shape == (batch_size, response_width):
        return grid.astype(np.int64)
    raise ValueError(
        f"versions must be an int, [{batch_size}] or [{batch_size}, {response_width}], got shape {grid.shape}"
    )


def build_prompt_response_batch(
    prompt_ids: Any,
    prompt_attention_mask: Any,
    response_ids: Any,
    response_attention_mask: Any,
    versions: Any,
    *,
    score_mask: Any = None,
    sample_ids: Sequence[str] | None = None,
) -> PromptResponseBatch:
    """The sequences of a left-padded prompt / right-padded response batch.

    `versions` is the policy version that generated each response token: an int for the whole batch,
    [batch] for one per sample, or [batch, response] per token. `score_mask` ([batch, response], default
    the response attention mask) marks the positions to score; tool output or other tokens the policy did
    not generate stay in the context unscored. Rows with nothing to score are left out.
    """
    prompts, prompt_mask = as_numpy(prompt_ids), as_numpy(prompt_attention_mask).astype(bool)
    responses, response_mask = as_numpy(response_ids), as_numpy(response_attention_mask).astype(bool)
    if prompts.ndim != 2 or responses.ndim != 2 or prompts.shape[0] != responses.shape[0]:
        raise ValueError(f"prompt {prompts.shape} and response {responses.shape} must be [batch, length] alike")
    if prompt_mask.shape != prompts.shape or response_mask.shape != responses.shape:
        raise ValueError("each attention mask must have the shape of its ids")
    batch_size, width = responses.shape
    to_score = response_mask if score_mask is None else as_numpy(score_mask).astype(bool)
    if to_score.shape != responses.shape:
        raise ValueError(f"score_mask must be {responses.shape}, got {to_score.shape}")
    if (to_score & ~response_mask).any():
        raise ValueError("score_mask marks response positions the attention mask leaves out")
    grid = response_version_grid(versions, batch_size, width)
    if (grid[to_score] < 0).any():
        raise ValueError("a position to score has a negative version; tag only unscored positions -1")
    if sample_ids is not None and len(sample_ids) != batch_size:
        raise ValueError(f"{len(sample_ids)} sample_ids for {batch_size} rows")

    prompt_lengths = _suffix_lengths(prompt_mask, "the prompt attention mask")
    response_lengths = _prefix_lengths(response_mask, "the response attention mask")
    sequences, rows, kept_prompt_lengths = [], [], []
    for row in range(batch_size):
        if not to_score[row].any():
            continue
        n_prompt, n_response = int(prompt_lengths[row]), int(response_lengths[row])
        if n_prompt == 0:
            # Position 0 has no context: the first response token could not be scored.
            raise ValueError(f"row {row} has an empty prompt; the first generated token needs a context")
        token_ids = np.concatenate([prompts[row, prompts.shape[1] - n_prompt :], responses[row, :n_response]])
        tags = np.full(n_prompt + n_response, UNSCORED_VERSION, dtype=np.int64)
        tags[n_prompt:] = np.where(to_score[row, :n_response], grid[row, :n_response], UNSCORED_VERSION)
        sample_id = sample_ids[row] if sample_ids is not None else str(row)
        sequences.append(SequenceInput.from_versions(token_ids, tags, sample_id=sample_id))
        rows.append(row)
        kept_prompt_lengths.append(n_prompt)
    return PromptResponseBatch(sequences, rows, kept_prompt_lengths, batch_size, width)


def scatter_response_scores(batch: PromptResponseBatch, result: ScoreResult) -> ResponseScores:
    """The answer to `batch.sequences`, laid out like the response tensor."""
    if len(result) != len(batch.sequences):
        raise ValueError(f"{len(result)} answers for {len(batch.sequences)} sequences")
    shape = (batch.batch_size, batch.response_width)
    logprobs = np.zeros(shape, dtype=np.float32)
    sources = np.zeros(shape, dtype=np.uint8)
    served = np.full(shape, UNSCORED_VERSION, dtype=np.int64)
    scored = np.zeros(shape, dtype=bool)
    for row, n_prompt, answer in zip(batch.rows, batch.prompt_lengths, result):
        stop = min(len(answer.logprobs) - n_prompt, batch.response_width)
        mask = answer.mask[n_prompt : n_prompt + stop]
        values = answer.logprobs[n_prompt : n_prompt + stop]
        logprobs[row, :stop] = np.where(mask, np.nan_to_num(values, nan=0.0), 0.0)
        sources[row, :stop] = np.where(mask, answer.sources[n_prompt : n_prompt + stop], 0)
        served[row, :stop] = np.where(mask, answer.served_versions[n_prompt : n_prompt + stop], UNSCORED_VERSION)
        scored[row, :stop] = mask
    return ResponseScores(logprobs, sources, served, scored)


def score_prompt_response_batch(
    client: LogitClient,
    batch: PromptResponseBatch,
    *,
    temperature: float = 1.0,
    allow_ewma_fallback: bool = False,
    timeout_s: float | None = None,
) -> ResponseScores:
    """Scores `batch` through `client` (one call, split by the client as needed) and lays the answer out."""
    if not batch.sequences:  # nothing to score: every row was padding or prompt only
        shape = (batch.batch_size, batch.response_width)
        return ResponseScores(
            np.zeros(shape, np.float32), np.zeros(shape, np.uint8), np.full(shape, UNSCORED_VERSION, np.int64),
            np.zeros(shape, bool),
        )  # fmt: skip
    result = client.score(
        batch.sequences, temperature=temperature, allow_ewma_fallback=allow_ewma_fallback, timeout_s=timeout_s
    )
    return scatter_response_scores(batch, result)

"""verl's DataProto batch in, `old_log_probs` out: the service as verl's `compute_log_prob` of the old policy.

verl's layout (its agent loop and rollouts): `prompts` left-padded to the prompt length, `responses`
right-padded to the response length, `input_ids = cat(prompts, responses)`, `attention_mask` over both,
`response_mask` [batch, response] 1 on tokens the model generated (0 on tool output and padding; when
absent verl derives it as `attention_mask[:, -response_length:]`), and `old_log_probs` [batch, response]
with position j the log-prob of `responses[:, j]`. verl is not imported: only its tensors are read.

Versions: verl's fully-asynchronous trainer tags each sample with the parameter version it started and
ended under (`param_version_start` / `param_version_end` in `non_tensor_batch`); a sample that stayed on one
version needs nothing more, one that crossed a version needs per-token versions ([batch, response]).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from logit_client import LogitClient

from .prompt_response import (
    PromptResponseBatch,
    ResponseScores,
    as_numpy,
    build_prompt_response_batch,
    score_prompt_response_batch,
)

OLD_LOG_PROBS_KEY = "old_log_probs"


def _tensors(data: Any) -> Mapping[str, Any]:
    """`data.batch` of a DataProto, or the mapping itself (a TensorDict or a dict of tensors)."""
    return data.batch if hasattr(data, "batch") else data


def _has(tensors: Mapping[str, Any], key: str) -> bool:
    return key in tensors.keys()  # TensorDict refuses `key in td`; its keys() answers


def versions_from_param_versions(param_version_start: Any, param_version_end: Any) -> np.ndarray:
    """[batch] versions of samples that began and ended under one version; refuses ones that crossed a switch."""
    start, end = as_numpy(param_version_start), as_numpy(param_version_end)
    # verl's initial rollouts may carry None before the first sync: that is version 0.
    start = np.array([0 if v is None else int(v) for v in start.tolist()], dtype=np.int64)
    end = np.array([0 if v is None else int(v) for v in end.tolist()], dtype=np.int64)
    crossed = np.flatnonzero(start != end)
    if crossed.size:
        raise ValueError(
            f"samples {crossed.tolist()} span versions {start[crossed].tolist()}..{end[crossed].tolist()}: "
            "which token came from which version is not in the batch; pass per-token versions [batch, response]"
        )
    return start


def build_verl_batch(data: Any, versions: Any, sample_ids: list[str] | None = None) -> PromptResponseBatch:
    """The sequences to score of a verl batch; `versions` is an int, [batch] or [batch, response]."""
    tensors = _tensors(data)
    responses = tensors["responses"]
    width = responses.shape[1]
    input_ids, attention_mask = tensors["input_ids"], tensors["attention_mask"]
    if input_ids.shape[1] <= width:
        raise ValueError(f"input_ids ({input_ids.shape[1]} wide) must hold the prompt before {width} response tokens")
    if not np.array_equal(as_numpy(input_ids[:, -width:]), as_numpy(responses)):
        raise ValueError("input_ids must end with responses (verl's cat(prompts, responses))")
    response_attention = attention_mask[:, -width:]
    score_mask = tensors["response_mask"] if _has(tensors, "response_mask") else response_attention
    return build_prompt_response_batch(
        input_ids[:, :-width], attention_mask[:, :-width], responses, response_attention, versions,
        score_mask=score_mask, sample_ids=sample_ids,
    )  # fmt: skip


def score_verl_batch(
    client: LogitClient,
    data: Any,
    versions: Any,
    *,
    temperature: float | None = None,
    allow_ewma_fallback: bool = False,
    timeout_s: float | None = None,
    key: str = OLD_LOG_PROBS_KEY,
) -> ResponseScores:
    """Scores a verl batch and writes `data.batch[key]` ([batch, response] float32, on the responses' device).

    `temperature` defaults to `data.meta_info["temperature"]`, the one verl's actor divides logits by.
    Positions outside `response_mask` get 0.0. Returns the scores with their sources and served versions.
    """
    if temperature is None:
        meta = getattr(data, "meta_info", None) or {}
        temperature = float(meta.get("temperature", 1.0))
    batch = build_verl_batch(data, versions)
    answer = score_prompt_response_batch(
        client, batch, temperature=temperature, allow_ewma_fallback=allow_ewma_fallback, timeout_s=timeout_s
    )
    tensors = _tensors(data)
    responses = tensors["responses"]
    import torch  # verl's tensors are torch; the batch is only read above, torch is needed to write it

    tensors[key] = torch.from_numpy(answer.logprobs).to(responses.device)
    return answer


"""What a rollout engine hands the trainer: per-token ids, behaviour log-probs and policy versions.

Engine-free (numpy only), so trainers can read rollouts without vLLM installed. Arrays are aligned with
the full sequence (prompt + response) as the service and the loss expect: position t holds token t, its
behaviour log-prob log μ_v(token_t | token_<t) and the version v whose weights sampled it; prompt
positions carry version -1 (not scored) and NaN behaviour log-probs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .requests import SequenceInput, spans_from_versions

PROMPT_VERSION = -1
"""The version tag of prompt positions: no policy generated them, so they are never scored."""


@dataclass
class Rollout:
    """One trajectory being generated, possibly over several policy versions (a partial rollout)."""

    prompt_token_ids: list[int]
    sample_id: str = ""
    token_ids: list[int] = field(default_factory=list)
    """Generated token ids, in order (the prompt excluded)."""
    behavior_logprobs: list[float] = field(default_factory=list)
    """log μ_v of each generated token under the sampling distribution that drew it."""
    versions: list[int] = field(default_factory=list)
    """The policy version of the weights that generated each token, stamped as the token arrived."""
    finished: bool = False
    finish_reason: str | None = None
    """vLLM's reason once finished ("stop", "length")."""
    interruptions: int = 0
    """How many version switches interrupted this rollout (each resumed it under the new version)."""
    temperature: float = 1.0
    """The sampling temperature; μ is the distribution at it, so score π_θv at the same one."""
    submitted_until: int = 0
    """Full-sequence positions below this were already submitted as segments."""

    def __post_init__(self) -> None:
        self.prompt_token_ids = [int(t) for t in self.prompt_token_ids]
        if not self.prompt_token_ids:
            raise ValueError(f"rollout {self.sample_id!r}: the prompt must hold at least one token")
        if self.submitted_until == 0:
            self.submitted_until = len(self.prompt_token_ids)

    @property
    def num_generated(self) -> int:
        return len(self.token_ids)

    @property
    def generated_versions(self) -> tuple[int, ...]:
        """The distinct versions that generated this rollout's tokens, ascending."""
        return tuple(sorted(set(self.versions)))

    @property
    def all_token_ids(self) -> np.ndarray:
        """int64 [len(prompt) + generated]: the full sequence."""
        return np.asarray(self.prompt_token_ids + self.token_ids, dtype=np.int64)

    @property
    def all_versions(self) -> np.ndarray:
        """int64 aligned with `all_token_ids`; -1 at prompt positions."""
        return np.asarray([PROMPT_VERSION] * len(self.prompt_token_ids) + self.versions, dtype=np.int64)

    @property
    def all_behavior_logprobs(self) -> np.ndarray:
        """float32 aligned with `all_token_ids`; NaN at prompt positions."""
        prompt = np.full(len(self.prompt_token_ids), np.nan, dtype=np.float32)
        return np.concatenate([prompt, np.asarray(self.behavior_logprobs, dtype=np.float32)])

    @property
    def loss_mask(self) -> np.ndarray:
        """bool aligned with `all_token_ids`: the generated positions."""
        return self.all_versions >= 0

    def append(self, token_ids: Sequence[int], logprobs: Sequence[float], policy_version: int) -> None:
        """Records tokens as they are generated, stamped with the version that produced them."""
        if len(token_ids) != len(logprobs):
            raise ValueError(f"{len(token_ids)} tokens but {len(logprobs)} log-probs")
        self.token_ids.extend(int(t) for t in token_ids)
        self.behavior_logprobs.extend(float(x) for x in logprobs)
        self.versions.extend([int(policy_version)] * len(token_ids))

    def to_sequence_input(self) -> SequenceInput:
        """The whole trajectory to score: spans are the runs of equal version (`SequenceInput.from_versions`)."""
        return SequenceInput.from_versions(self.all_token_ids, self.all_versions, sample_id=self.sample_id)

    def pending_segment(self) -> SequenceInput | None:
        """Tokens generated since the last submission, as a segment (ids up to its end, spans of its
        positions); None when there is nothing new."""
        end = len(self.prompt_token_ids) + len(self.token_ids)
        if end <= self.submitted_until:
            return None
        spans = [
            (v, max(s, self.submitted_until), e)
            for v, s, e in spans_from_versions(self.all_versions)
            if e > self.submitted_until
        ]
        return SequenceInput(self.all_token_ids, tuple(spans), self.sample_id)


def loss_inputs(rollouts: Sequence[Rollout], width: int | None = None) -> dict[str, np.ndarray]:
    """[batch, width] arrays for the loss, right-padded: token_ids (0), behavior_logprobs (0.0 outside the
    mask, never NaN), versions (-1) and loss_mask (False). `torch.from_numpy` each for the loss."""
    longest = max((len(r.prompt_token_ids) + r.num_generated for r in rollouts), default=0)
    if width is None:
        width = longest
    elif width < longest:
        raise ValueError(f"width {width} is shorter than the longest rollout ({longest} tokens)")
    out = {
        "token_ids": np.zeros((len(rollouts), width), dtype=np.int64),
        "behavior_logprobs": np.zeros((len(rollouts), width), dtype=np.float32),
        "versions": np.full((len(rollouts), width), PROMPT_VERSION, dtype=np.int64),
        "loss_mask": np.zeros((len(rollouts), width), dtype=bool),
    }
    for i, r in enumerate(rollouts):
        n = len(r.prompt_token_ids) + r.num_generated
        mask = r.loss_mask
        out["token_ids"][i, :n] = r.all_token_ids
        out["behavior_logprobs"][i, :n] = np.where(mask, r.all_behavior_logprobs, 0.0)
        out["versions"][i, :n] = r.all_versions
        out["loss_mask"][i, :n] = mask
    return out

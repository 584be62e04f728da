"""The rollout side: an inference engine with its own numerics, and batches of partial rollouts.

The engine samples with weights rounded to bfloat16 (computed in float32: bf16 matmuls are slow on most
CPUs) and adds Gaussian noise to its logits, so behaviour log-probs μ_v differ from the trainer's float32
π_θv of the same version (the train–inference discrepancy). A
batch started at version s is generated in k segments, one per version s, s+1, …, s+k−1: interrupted at
each weight update and resumed under the new weights, with every token tagged by the version that
sampled it. `vllm_engine.py` is the same rollout side on a real vLLM engine (`--rollout-engine vllm`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from logit_client import SequenceInput
from logit_service.backends.torch_backend import build_model

from .task import ReversalTask


@dataclass
class RolloutBatch:
    """One trainer batch of trajectories (prompts × group), filled segment by segment."""

    start_version: int
    ids: torch.Tensor  # long [B, T]
    strings: torch.Tensor  # long [B, turns, digits]
    versions: torch.Tensor  # long [B, T]; -1 on prompt and environment tokens
    behavior_logprobs: torch.Tensor  # float32 [B, T]; 0 where not generated
    segments: list[np.ndarray]  # generated positions of each segment, in order
    sample_ids: list[str]
    next_segment: int = 0
    env_filled: bool = False
    segment_versions: list[int] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.next_segment == len(self.segments)

    @property
    def loss_mask(self) -> torch.Tensor:
        return self.versions >= 0

    def segment_inputs(self, j: int) -> list[SequenceInput]:
        """Segment j of every trajectory as the service sees it: the tokens up to its end and spans over
        the positions it generated (two spans when an environment answer lies inside it)."""
        positions = self.segments[j]
        end = int(positions[-1]) + 1
        runs = np.split(positions, np.flatnonzero(np.diff(positions) != 1) + 1)
        version = self.segment_versions[j]
        spans = tuple((version, int(r[0]), int(r[-1]) + 1) for r in runs)
        return [SequenceInput(self.ids[i, :end].numpy(), spans=spans, sample_id=sid) for i, sid in enumerate(self.sample_ids)]

    def trajectory_inputs(self) -> list[SequenceInput]:
        """Whole trajectories with per-token version spans, as a trainer asks for them."""
        return [
            SequenceInput.from_versions(self.ids[i].numpy(), self.versions[i].numpy(), sample_id=sid)
            for i, sid in enumerate(self.sample_ids)
        ]


def new_batch(task: ReversalTask, start_version: int, strings: torch.Tensor, num_segments: int, tag: str) -> RolloutBatch:
    """A batch holding only its prompts, its generated positions split into `num_segments` segments."""
    ids = task.start(strings)
    segments = [s for s in np.array_split(task.layout.generated_positions(), num_segments) if len(s)]
    return RolloutBatch(
        start_version=start_version,
        ids=ids,
        strings=strings,
        versions=torch.full_like(ids, -1),
        behavior_logprobs=torch.zeros(ids.shape, dtype=torch.float32),
        segments=segments,
        sample_ids=[f"{tag}-v{start_version}-{i}" for i in range(ids.shape[0])],
    )


class RolloutEngine:
    """Samples with bf16-rounded weights plus logit noise; weights arrive by `sync(version, state_dict)`."""

    def __init__(self, model_config: dict, task: ReversalTask, *, logit_noise: float, seed: int) -> None:
        self.task = task
        self.logit_noise = logit_noise
        self.generator = torch.Generator().manual_seed(10_000 + seed)
        self.model = build_model(model_config, dtype="float32", device="cpu", attn_implementation="sdpa")
        self.version: int | None = None

    def sync(self, version: int, state_dict: dict[str, torch.Tensor]) -> None:
        """A weight update at an interruption point, received in bf16 as engines commonly do."""
        self.model.load_state_dict({k: v.to(torch.bfloat16).to(torch.float32) for k, v in state_dict.items()})
        self.version = version

    def new_batch(self, start_version: int, strings: torch.Tensor, num_segments: int, tag: str) -> RolloutBatch:
        return new_batch(self.task, start_version, strings, num_segments, tag)

    @torch.inference_mode()
    def generate_segment(self, batch: RolloutBatch) -> int:
        """Generates the batch's next segment under the engine's current version; returns its index."""
        assert self.version is not None and not batch.done
        j = batch.next_segment
        layout = self.task.layout
        for p in batch.segments[j].tolist():
            if layout.turns == 2 and p > layout.env_start and not batch.env_filled:
                self.task.fill_environment(batch.ids, batch.strings)
                batch.env_filled = True
            logits = self.model(input_ids=batch.ids[:, :p], use_cache=False).logits[:, -1].float()
            if self.logit_noise > 0:
                logits = logits + self.logit_noise * torch.randn(logits.shape, generator=self.generator)
            logprobs = torch.log_softmax(logits, dim=-1)
            tokens = torch.multinomial(logprobs.exp(), 1, generator=self.generator).squeeze(1)
            batch.ids[:, p] = tokens
            batch.versions[:, p] = self.version
            batch.behavior_logprobs[:, p] = logprobs.gather(1, tokens[:, None]).squeeze(1)
        batch.segment_versions.append(self.version)
        batch.next_segment += 1
        return j

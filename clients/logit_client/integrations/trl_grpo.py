"""TRL's GRPOTrainer with its versions published to the service and its old log-probs served by it.

Where TRL computes old log-probs (TRL 1.x, `GRPOTrainer._generate_and_score_completions`): right after a
generation round it calls `self._get_per_token_logps_and_entropies(self.model, prompt_completion_ids,
attention_mask, logits_to_keep, ...)` under `torch.no_grad()`, and only when generation runs ahead of the
optimiser (`steps_per_generation * num_iterations` not dividing `gradient_accumulation_steps`) or vLLM's
importance-sampling correction is on; otherwise `_compute_loss` takes `per_token_logps.detach()`. The
completions of one round are then trained over `steps_per_generation * num_iterations` micro-steps,
several optimiser steps, all against those old log-probs.

`ServiceGRPOTrainer` hooks exactly there: that call is answered by the service under the version that
generated each token (no local forward), and when TRL skipped it the served values are added anyway, so
every loss uses π_θv from the service. A callback publishes version `state.global_step` at the start and
after every optimiser step, so the version that generates a round (the weights at `global_step`) is
registered before it is scored. Per-token versions come from a `rollout_func` that returns
`policy_versions` (one list per completion, aligned with `completion_ids`, e.g. from an engine that changed
weights mid-generation); without it every token of a round carries the round's `global_step`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback
from trl import GRPOTrainer

from logit_client import LogitClient, TokenSource, publish

from .prompt_response import build_prompt_response_batch, score_prompt_response_batch

__all__ = ["POLICY_VERSIONS_FIELD", "PublishEveryVersion", "ServiceGRPOTrainer"]

logger = logging.getLogger(__name__)

POLICY_VERSIONS_FIELD = "policy_versions"
"""The key a `rollout_func` may return: per completion, the version that generated each completion token."""


class PublishEveryVersion(TrainerCallback):
    """Publishes the weights as version `state.global_step` at train begin and after every optimiser step.

    Every rank takes part in gathering the state dict (`accelerator.get_state_dict`: the full state dict
    of an FSDP or DeepSpeed model on the main process); only the main process writes and registers it;
    then all ranks wait, so no rank scores a version before it is registered.
    """

    def __init__(self, trainer: ServiceGRPOTrainer) -> None:
        self.trainer = trainer
        self.published: list[int] = []

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step not in self.published:
            self._publish(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self._publish(state.global_step)

    def _publish(self, policy_version: int) -> None:
        trainer = self.trainer
        accelerator = trainer.accelerator
        state_dict = accelerator.get_state_dict(trainer.model)
        if accelerator.is_main_process:
            config = accelerator.unwrap_model(trainer.model).config.to_dict()
            published = publish(
                trainer.logit_client,
                policy_version,
                state_dict,
                trainer.snapshot_dir,
                model_config=config,
                timeout_s=trainer.publish_timeout_s,
            )
            logger.info("published version %d (%s)", policy_version, getattr(published, "digest", published))
        accelerator.wait_for_everyone()
        self.published.append(policy_version)


class ServiceGRPOTrainer(GRPOTrainer):
    """A `GRPOTrainer` whose old per-token log-probs come from the old-logit service.

    Extra arguments: `logit_client` (a `LogitClient`), `snapshot_dir` (the service's snapshot directory as
    this process sees it), `allow_ewma_fallback` (serve a version that left the retention window from the
    EWMA; such tokens are reported in the `logit_service/ewma_frac` metric), and RPC timeouts. Everything
    else is GRPOTrainer's. Each training batch also carries `completion_versions` ([batch, completion],
    -1 on padding), the version that generated each token.
    """

    def __init__(
        self,
        *args: Any,
        logit_client: LogitClient,
        snapshot_dir: str | Path,
        allow_ewma_fallback: bool = False,
        score_timeout_s: float | None = None,
        publish_timeout_s: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if hasattr(self.accelerator.unwrap_model(self.model), "peft_config"):
            # The service rebuilds the architecture from config.json and loads a full state dict; an adapter's
            # weights are neither. Merge the adapter and publish the merged model instead.
            raise ValueError("ServiceGRPOTrainer does not publish PEFT adapters; train and publish a full model")
        self.logit_client = logit_client
        self.snapshot_dir = Path(snapshot_dir)
        self.allow_ewma_fallback = allow_ewma_fallback
        self.score_timeout_s = score_timeout_s
        self.publish_timeout_s = publish_timeout_s
        self.publisher = PublishEveryVersion(self)
        self.add_callback(self.publisher)
        self._round: _Round | None = None

    # --- generation: remember which version made which token --------------------------------------
    def _generate(self, prompts: list):
        generated = super()._generate(prompts)
        extra_fields = generated[5]
        assert self._round is not None, "_generate runs inside _generate_and_score_completions"
        self._round.token_versions = extra_fields.pop(POLICY_VERSIONS_FIELD, None)
        if self._round.token_versions is not None:
            completion_ids = generated[1]
            lengths = [len(ids) for ids in completion_ids]
            if [len(v) for v in self._round.token_versions] != lengths:
                raise ValueError(f"rollout_func's {POLICY_VERSIONS_FIELD!r} must align with completion_ids")
        return generated

    def _generate_and_score_completions(self, inputs):
        # The weights that generate this round are those after `global_step` optimiser steps: the version
        # the callback published last (vLLM's weights are synced at that same step).
        self._round = _Round(policy_version=self.state.global_step)
        try:
            output = super()._generate_and_score_completions(inputs)
            round_ = self._round
            if round_.old_logps is None:  # TRL judged them equal to the current forward and skipped them
                attention = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
                ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
                self._serve_old_logps(ids, attention, output["completion_ids"].size(1))
            output["old_per_token_logps"] = round_.old_logps
            output["completion_versions"] = round_.completion_versions
            output["completion_sources"] = round_.completion_sources
        finally:
            self._round = None
        return output

    # --- the hook: TRL's old-log-prob forward, answered by the service ------------------------------
    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        round_ = self._round
        is_old_logps_call = (
            round_ is not None
            and round_.old_logps is None
            and model is self.model
            and not torch.is_grad_enabled()
            and not kwargs.get("compute_entropy", False)
        )
        if not is_old_logps_call:
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
        if any(kwargs.get(k) is not None for k in ("pixel_values", "image_grid_thw", "pixel_attention_mask")):
            raise NotImplementedError("the old-logit service scores token sequences; multimodal inputs are not served")
        return self._serve_old_logps(input_ids, attention_mask, logits_to_keep), None, None

    def _serve_old_logps(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, width: int) -> torch.Tensor:
        round_ = self._round
        assert round_ is not None
        completion_mask = attention_mask[:, -width:]
        versions = round_.version_grid(completion_mask)
        batch = build_prompt_response_batch(
            input_ids[:, :-width], attention_mask[:, :-width], input_ids[:, -width:], completion_mask, versions
        )
        answer = score_prompt_response_batch(
            self.logit_client,
            batch,
            temperature=self.temperature,
            allow_ewma_fallback=self.allow_ewma_fallback,
            timeout_s=self.score_timeout_s,
        )
        device = input_ids.device
        round_.old_logps = torch.from_numpy(answer.logprobs).to(device)
        round_.completion_versions = torch.from_numpy(versions).to(device)
        round_.completion_sources = torch.from_numpy(answer.sources).to(device)
        return round_.old_logps

    # --- metrics: how stale the trained tokens were, and how they were served ----------------------
    def _compute_loss(self, model, inputs):
        versions = inputs.get("completion_versions")
        if versions is not None:
            mode = "train" if self.model.training else "eval"
            generated = versions >= 0
            if generated.any():
                staleness = (self.state.global_step - versions[generated]).float()
                self._metrics[mode]["logit_service/staleness_mean"].append(staleness.mean().item())
                self._metrics[mode]["logit_service/staleness_max"].append(staleness.max().item())
                sources = inputs["completion_sources"][generated]
                ewma = (sources == int(TokenSource.EWMA)).float().mean().item()
                self._metrics[mode]["logit_service/ewma_frac"].append(ewma)
        return super()._compute_loss(model, inputs)


class _Round:
    """What one generation round learns on the way: the versions of its tokens and their served old log-probs."""

    def __init__(self, policy_version: int) -> None:
        self.policy_version = policy_version
        self.token_versions: list[list[int]] | None = None
        self.old_logps: torch.Tensor | None = None
        self.completion_versions: torch.Tensor | None = None
        self.completion_sources: torch.Tensor | None = None

    def version_grid(self, completion_mask: torch.Tensor) -> np.ndarray:
        """[batch, completion] versions; -1 where the completion mask is 0."""
        mask = completion_mask.detach().cpu().numpy().astype(bool)
        grid = np.full(mask.shape, self.policy_version, dtype=np.int64)
        if self.token_versions is not None:
            if len(self.token_versions) != mask.shape[0]:
                raise ValueError(f"{len(self.token_versions)} version lists for {mask.shape[0]} completions")
            for row, tags in enumerate(self.token_versions):
                grid[row, : len(tags)] = np.asarray(tags, dtype=np.int64)
        return np.where(mask, grid, -1)

"""Where each arm's proximal ("old") log-probs come from, and what getting them costs.

The exact strategies all ask the service; they differ only in when and how:

- exact-snapshot: the trainer scores each segment under its version at consume time (retention window
  k+1, so every version a batch still needs is resident or on disk);
- exact-follower: the rollout side pushes each segment as it is generated and the replica scores it in
  the background while its version is current; the trainer's later Score is answered from kept results;
- exact-barrier: the same pushes with a retention window of 1, and a Barrier before every weight switch.

All three forward exactly the same inputs (each segment over its own prefix), so their answers are
bit-identical; scoring whole trajectories in one forward instead would move the last bits, because CPU
kernels pick their blocking by row count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from logit_client import LogitClient, TokenSource

from .config import RunConfig
from .rollout import RolloutBatch


@dataclass
class Proximal:
    """The anchor the loss gets, per token of the batch, and how it was obtained."""

    logprobs: torch.Tensor | None  # float32 [B, T]; None: loglinear, built from the first training forward
    sources: torch.Tensor | None  # TokenSource per token; None means exact or not from the service
    wait_s: float  # trainer time spent obtaining it (a service call, or an in-trainer forward)
    tokens_scored: int
    route: str  # exact, ewma, recompute, behavior, loglinear


def retention_window(config: RunConfig) -> int:
    """The versions each arm needs the service to keep: its cost in snapshot memory."""
    if config.arm in ("exact-snapshot", "adaptive"):
        return config.staleness + 1
    if config.arm == "exact-follower":
        return 2  # segments are scored while current; one version of slack before eviction
    return 1


def wait_for_ewma(client: LogitClient, version: int, timeout_s: float = 60.0) -> None:
    """The EWMA folds in the background after a publication; wait until it covers `version`."""
    deadline = time.monotonic() + timeout_s
    while True:
        ewma = client.list_versions().ewma
        if ewma is not None and ewma.policy_version >= version:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the service's EWMA did not fold version {version} within {timeout_s} s")
        time.sleep(0.002)


def score_segments(client: LogitClient, batch: RolloutBatch, **options) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Every segment of every trajectory over its own prefix; returns log-probs, sources, tokens scored."""
    B, T = batch.ids.shape
    logprobs = torch.zeros(B, T, dtype=torch.float32)
    sources = torch.zeros(B, T, dtype=torch.uint8)
    inputs = [seg for j in range(len(batch.segments)) for seg in batch.segment_inputs(j)]
    result = client.score(inputs, **options)
    for n, seq in enumerate(result.sequences):
        i = n % B
        where = torch.from_numpy(seq.mask)
        L = len(seq.mask)
        logprobs[i, :L][where] = torch.from_numpy(seq.logprobs[seq.mask])
        sources[i, :L][where] = torch.from_numpy(seq.sources[seq.mask])
    return logprobs, sources, result.tokens_scored


def score_trajectories(client: LogitClient, batch: RolloutBatch, rows: slice = slice(None), **options):
    """Whole trajectories with their version spans (answered from kept segment results where there are some)."""
    inputs = batch.trajectory_inputs()[rows]
    result = client.score(inputs, **options)
    return (
        torch.from_numpy(result.padded(pad_value=0.0)),
        torch.from_numpy(result.padded_sources().astype(np.uint8)),
        result,
    )


def _require_exact(sources: torch.Tensor, mask: torch.Tensor, arm: str) -> None:
    if not bool((sources[mask] == TokenSource.EXACT).all()):
        bad = int((sources[mask] != TokenSource.EXACT).sum())
        raise RuntimeError(f"{arm}: {bad} tokens were not answered exactly; the strategy failed")


class OldLogprobs:
    """One arm's route to the proximal log-probs; the pipeline calls the hooks at the matching points."""

    def __init__(self, config: RunConfig, client: LogitClient) -> None:
        self.config = config
        self.client = client
        self.submit_s = 0.0
        self.exact_s_per_token: float | None = None  # adaptive: measured cost of the exact route
        self.last_spot_error: float = float("nan")

    # --- rollout side -------------------------------------------------------------------------------

    def on_segment(self, batch: RolloutBatch, j: int) -> None:
        """Called as soon as segment j of `batch` has been generated."""
        if self.config.arm in ("exact-follower", "exact-barrier"):
            started = time.perf_counter()
            self.client.submit_segments(batch.segment_inputs(j))
            self.submit_s += time.perf_counter() - started

    def before_switch(self, version: int) -> float:
        """Called by the rollout side before it switches from `version` to the next; returns the stall."""
        if self.config.arm != "exact-barrier":
            return 0.0
        started = time.perf_counter()
        self.client.barrier(version)
        return time.perf_counter() - started

    # --- trainer side -------------------------------------------------------------------------------

    def proximal(self, batch: RolloutBatch, version: int, trainer: torch.nn.Module, policy_forward) -> Proximal:
        arm = self.config.arm
        mask = batch.loss_mask
        started = time.perf_counter()
        if arm in ("sync", "exact-snapshot"):
            logprobs, sources, tokens = score_segments(self.client, batch)
            wait = time.perf_counter() - started
            _require_exact(sources, mask, arm)
            return Proximal(logprobs, None, wait, tokens, "exact")
        if arm in ("exact-follower", "exact-barrier"):
            logprobs, sources, result = score_trajectories(self.client, batch)
            wait = time.perf_counter() - started
            _require_exact(sources, mask, arm)
            return Proximal(logprobs, None, wait, result.tokens_scored, "exact")
        if arm == "ewma":
            wait_for_ewma(self.client, version)
            logprobs, sources, result = score_trajectories(self.client, batch, force_ewma=True)
            return Proximal(logprobs, sources, time.perf_counter() - started, result.tokens_scored, "ewma")
        if arm == "adaptive":
            return self._adaptive(batch, version, started)
        if arm == "recompute":
            with torch.no_grad():  # the peers' default: an extra trainer forward with the current weights
                logprobs = policy_forward(trainer, batch.ids)
            return Proximal(logprobs, None, time.perf_counter() - started, int(mask.sum()), "recompute")
        if arm == "bypass":
            return Proximal(batch.behavior_logprobs.clone(), None, 0.0, 0, "behavior")
        if arm == "loglinear":
            return Proximal(None, None, 0.0, 0, "loglinear")
        raise ValueError(arm)

    def _adaptive(self, batch: RolloutBatch, version: int, started: float) -> Proximal:
        """Beyond the paper: exact when the EWMA's spot-checked error is too large and the exact route's
        predicted wait fits the latency budget; the EWMA otherwise."""
        config, mask = self.config, batch.loss_mask
        m = min(config.spot_check_sequences, batch.ids.shape[0])
        wait_for_ewma(self.client, version)
        head_lp, head_src, head = score_trajectories(
            self.client, batch, slice(0, m), force_ewma=True, spot_check_fraction=1.0
        )
        tokens = head.tokens_scored
        self.last_spot_error = head.spot_check.mean_abs_error if head.spot_check.tokens_checked else float("nan")
        tokens_needed = int(mask.sum())
        predicted_s = 0.0 if self.exact_s_per_token is None else self.exact_s_per_token * tokens_needed
        too_far = not head.spot_check.tokens_checked or self.last_spot_error > config.effective_tolerance
        if too_far and predicted_s <= config.latency_budget_s:
            exact_started = time.perf_counter()
            logprobs, sources, exact_tokens = score_segments(self.client, batch, allow_ewma_fallback=True)
            self.exact_s_per_token = (time.perf_counter() - exact_started) / max(exact_tokens, 1)
            return Proximal(logprobs, sources, time.perf_counter() - started, tokens + exact_tokens, "exact")
        if m < batch.ids.shape[0]:
            tail_lp, tail_src, tail = score_trajectories(self.client, batch, slice(m, None), force_ewma=True)
            head_lp, head_src = torch.cat([head_lp, tail_lp]), torch.cat([head_src, tail_src])
            tokens += tail.tokens_scored
        return Proximal(head_lp, head_src, time.perf_counter() - started, tokens, "ewma")

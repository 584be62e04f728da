"""The end-to-end demo: an asynchronous RL loop whose trainer asks the service for exact old log-probs.

A trainer really updates a tiny model and publishes every version; a rollout thread samples with
lagging weights and switches version mid-response; per step the trainer scores each token under the
version that generated it, checks every answer against a direct forward with that version's saved
weights, and shows what the decoupled loss sees under each choice of "old" log-probs.
"""

from __future__ import annotations

import queue
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from logit_client import LogitClient, SequenceInput, spans_from_versions
from logit_client.loss import DecoupledPPOConfig, decoupled_ppo_loss
from logit_service.config import ServerConfig
from logit_service.demo.plots import write_plots
from logit_service.demo.report import conclusion, print_loss_table, print_service_table, print_step
from logit_service.demo.rollout import PublishedVersion, Rollout, RolloutWorker
from logit_service.demo.tiny_model import build_tiny_model, reference_logprobs
from logit_service.server.app import ServerThread
from logit_service.snapshots.manifest import snapshot_dirname

TOLERANCE = 1e-5
VOCAB = 512
BATCH = 8
# The discrepancy window is tuned for numerical noise between engines, as in practice (ROLL uses
# 0.8–1.25-style windows); fed a stale "old", it starts firing on honest policy drift.
LOSS_CONFIG = DecoupledPPOConfig(mask_low=0.8, mask_high=1.25, is_cap=2.0)


@dataclass
class StepRecord:
    step: int
    trainer_version: int
    sequences: int
    tokens: int
    versions_seen: list[int]
    partial: int
    staleness_mean: float
    staleness_max: int
    max_error: float
    tokens_per_s: float
    reward: float
    views: dict[str, dict[str, float]] = field(default_factory=dict)


def _policy_logprobs(model: torch.nn.Module, token_ids: torch.Tensor) -> torch.Tensor:
    """The trainer's current forward (with gradient), aligned with positions; position 0 is 0."""
    logits = model(input_ids=token_ids, use_cache=False).logits[:, :-1].float()
    picked = torch.log_softmax(logits, dim=-1).gather(2, token_ids[:, 1:, None]).squeeze(2)
    return torch.cat([torch.zeros_like(picked[:, :1]), picked], dim=1)


def _reward(rollouts: list[Rollout]) -> torch.Tensor:
    """A toy verifiable reward: the share of response tokens from the lowest quarter of the vocabulary."""
    return torch.tensor([float((r.token_ids[r.prompt_len :] < VOCAB // 4).mean()) for r in rollouts])


class ReferenceForwards:
    """Direct forwards with a version's saved weights, read back from its snapshot on disk."""

    def __init__(self, snapshot_dir: Path) -> None:
        self.snapshot_dir = snapshot_dir
        self.model = build_tiny_model(vocab_size=VOCAB)

    def logprobs(self, version: int, token_ids: np.ndarray) -> np.ndarray:
        from safetensors.torch import load_file

        self.model.load_state_dict(load_file(str(self.snapshot_dir / snapshot_dirname(version) / "model.safetensors")))
        return reference_logprobs(self.model, token_ids).numpy()


def _check_exact(reference: ReferenceForwards, rollouts: list[Rollout], served: np.ndarray) -> float:
    """Max |served − direct forward| over every scored token, grouped by version to load each once."""
    worst = 0.0
    for version in sorted({int(v) for r in rollouts for v in r.versions if v >= 0}):
        for i, r in enumerate(rollouts):
            where = r.versions == version
            if where.any():
                expected = reference.logprobs(version, r.token_ids)
                worst = max(worst, float(np.abs(served[i][where] - expected[where]).max()))
    return worst


def _loss_views(policy, exact, ewma, behavior, advantages, loss_mask, versions, current_version):
    """What the decoupled loss sees under each choice of the "old" (proximal) log-probs."""
    olds = {"exact": exact, "ewma": ewma, "recompute": policy.detach()}
    views = {}
    for name, proximal in olds.items():
        out = decoupled_ppo_loss(
            policy_logprobs=policy,
            proximal_logprobs=proximal,
            behavior_logprobs=behavior,
            advantages=advantages,
            loss_mask=loss_mask,
            config=LOSS_CONFIG,
            versions=versions,
            current_version=current_version,
        )
        views[name] = {**out.metrics, "_loss": out.loss}
    return views


DEFAULT_PLOT_DIR = Path("logit-demo")


def run_demo(*, versions: int = 6, seed: int = 0, plot_dir: Path = DEFAULT_PLOT_DIR) -> int:
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory(prefix="logit-demo-") as tmp:
        snapshot_dir = Path(tmp) / "snapshots"
        config = ServerConfig(snapshot_dir=snapshot_dir, port=0, retention_window=6, ewma_target_age=1.0)
        print("starting the service in-process (in-process registry, temporary snapshot directory)", flush=True)
        server = ServerThread(config).start()
        print(f"service on {server.address}; snapshots in {snapshot_dir}; retention window K={config.retention_window}", flush=True)
        try:
            return _loop(server, snapshot_dir, versions=versions, seed=seed, plot_dir=plot_dir)
        finally:
            server.stop()


def _loop(server: ServerThread, snapshot_dir: Path, *, versions: int, seed: int, plot_dir: Path) -> int:
    trainer = build_tiny_model(seed=seed, vocab_size=VOCAB)
    optimizer = torch.optim.AdamW(trainer.parameters(), lr=2e-2)
    model_config = trainer.config.to_dict()
    client = LogitClient(server.address, timeout_s=120)
    n_params = sum(p.numel() for p in trainer.parameters())
    print(f"trainer: tiny random-weight Qwen2 ({n_params / 1e6:.2f} M parameters, built from a config); publishing v0", flush=True)
    client.publish(0, trainer.state_dict(), snapshot_dir, model_config=model_config)
    print(
        f"rollout thread: samples {BATCH}-rollout batches in bfloat16 with weights two versions behind, switching "
        "version every 12 tokens (partial rollouts); the first batch takes a while on CPU",
        flush=True,
    )
    published = PublishedVersion(0)
    # A deep queue is what makes the loop asynchronous: batches hold rollouts from older versions.
    rollouts_queue: queue.Queue[Rollout] = queue.Queue(maxsize=3 * BATCH)
    worker = RolloutWorker(snapshot_dir=snapshot_dir, model_config=model_config, published=published, out=rollouts_queue, seed=seed)
    worker.start()
    reference = ReferenceForwards(snapshot_dir)
    records: list[StepRecord] = []
    try:
        for step in range(versions):
            current = published.get()
            batch = []
            while len(batch) < BATCH:
                if worker.error is not None:
                    raise RuntimeError("rollout worker failed") from worker.error
                try:
                    batch.append(rollouts_queue.get(timeout=1.0))
                except queue.Empty:
                    continue
            records.append(_train_step(step, current, batch, client, trainer, optimizer, reference))
            client.publish(current + 1, trainer.state_dict(), snapshot_dir, model_config=model_config)
            published.set(current + 1)
            print_step(records[-1], current + 1)
    finally:
        worker.stop_event.set()
        worker.join(timeout=30)
        client.close()
    print_service_table(records)
    print_loss_table(records)
    worst = max(r.max_error for r in records)
    ok = worst <= TOLERANCE
    print(f"\nexactness: max |service − direct forward| = {worst:.2e} over all steps (tolerance {TOLERANCE:.0e}): {'OK' if ok else 'MISMATCH'}")
    paths = write_plots(records, plot_dir, TOLERANCE)
    print("plots: " + ", ".join(str(p.resolve()) for p in paths))
    print("\n" + conclusion(records, TOLERANCE))
    return 0 if ok else 1


def _train_step(step, current, batch, client, trainer, optimizer, reference) -> StepRecord:
    inputs = [SequenceInput(r.token_ids, spans=tuple(spans_from_versions(r.versions)), sample_id=r.sample_id) for r in batch]
    started = time.perf_counter()
    exact = client.score(inputs)
    elapsed = time.perf_counter() - started
    ewma = client.score(inputs, force_ewma=True)
    assert [s.sample_id for s in exact.sequences] == [r.sample_id for r in batch]
    served = exact.padded(pad_value=float("nan"))
    max_error = _check_exact(reference, batch, served)

    token_ids = torch.tensor(np.stack([r.token_ids for r in batch]))
    versions = torch.tensor(np.stack([r.versions for r in batch]))
    loss_mask = versions >= 0
    behavior = torch.tensor(np.nan_to_num(np.stack([r.behavior_logprobs for r in batch])))
    proximal = torch.tensor(exact.padded(pad_value=0.0))
    ewma_logprobs = torch.tensor(ewma.padded(pad_value=0.0))
    reward = _reward(batch)
    advantages = ((reward - reward.mean()) / (reward.std() + 1e-6))[:, None].expand_as(proximal)

    policy = _policy_logprobs(trainer, token_ids)
    views = _loss_views(policy, proximal, ewma_logprobs, behavior, advantages, loss_mask, versions, current)
    optimizer.zero_grad()
    views["exact"].pop("_loss").backward()  # the trainer learns from the exact decomposition
    optimizer.step()
    staleness = (current - versions[loss_mask]).float()
    return StepRecord(
        step=step,
        trainer_version=current,
        sequences=len(batch),
        tokens=int(loss_mask.sum()),
        versions_seen=sorted({int(v) for v in versions[loss_mask].unique()}),
        partial=sum(len(set(r.versions[r.versions >= 0].tolist())) > 1 for r in batch),
        staleness_mean=float(staleness.mean()),
        staleness_max=int(staleness.max()),
        max_error=max_error,
        tokens_per_s=exact.tokens_scored / elapsed,
        reward=float(reward.mean()),
        views=views,
    )

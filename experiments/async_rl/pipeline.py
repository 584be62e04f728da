"""One run: a trainer that optimises for real, a rollout engine k versions behind it, and the service.

The loop is sequential and deterministic (each version: weight switch, rollout segments, trainer step,
publication), so a run is reproducible bit for bit from its config; the asynchrony is in the data: a
batch is started at version s, generated in segments under s, s+1, …, and trained on at version s+k.
Timings are per phase, so the trainer's wait for old log-probs and the rollout's stall at a switch are
measured directly rather than hidden in an overlap.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

from logit_client import LogitClient
from logit_client.loss import DecoupledPPOConfig, decoupled_ppo_loss
from logit_service.config import ServerConfig
from logit_service.demo.tiny_model import tiny_qwen2_config
from logit_service.server.app import ServerThread
from logit_service.snapshots.manifest import snapshot_dirname

from .config import EXACT_ARMS, RunConfig
from .old_logprobs import OldLogprobs, Proximal, retention_window, score_trajectories, wait_for_ewma
from .rollout import RolloutBatch, RolloutEngine
from .task import VOCAB_SIZE, ReversalTask

EXACT_TOLERANCE = 1e-5
"""Max |service − direct forward| allowed for an exact answer (fp32 on CPU gives ~1e-6)."""


def policy_logprobs(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """[B, T] log-probs of each token given its prefix (position 0: 0), float32 normaliser."""
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
    picked = torch.log_softmax(logits, dim=-1).gather(2, ids[:, 1:, None]).squeeze(2)
    return torch.cat([torch.zeros_like(picked[:, :1]), picked], dim=1)


@torch.no_grad()
def greedy_reward(model: torch.nn.Module, task: ReversalTask, strings: torch.Tensor) -> float:
    """Mean reward of greedy decoding with the trainer's weights on held-out prompts."""
    layout = task.layout
    ids = task.start(strings)
    filled = False
    for p in layout.generated_positions().tolist():
        if layout.turns == 2 and p > layout.env_start and not filled:
            task.fill_environment(ids, strings)
            filled = True
        ids[:, p] = model(input_ids=ids[:, :p], use_cache=False).logits[:, -1].argmax(dim=-1)
    return float(task.reward(ids, strings).mean())


def group_advantages(reward: torch.Tensor, group_size: int) -> torch.Tensor:
    """GRPO: reward minus its group's mean, over the group's standard deviation."""
    grouped = reward.view(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    return (centred / (grouped.std(dim=1, keepdim=True) + 1e-6)).view(-1)


def _digest(values: torch.Tensor) -> str:
    return hashlib.sha256(values.detach().to(torch.float32).numpy().astype("<f4").tobytes()).hexdigest()


def _finite_mean(values: list[float]) -> float:
    kept = [v for v in values if math.isfinite(v)]
    return float(np.mean(kept)) if kept else 0.0


class _References:
    """Direct fp32 forwards under any recent version's weights: the ground truth π_θv for the metrics."""

    def __init__(self, model_config: dict) -> None:
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_config(_config(model_config), dtype=torch.float32).eval()
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def keep(self, version: int, state: dict[str, torch.Tensor], oldest_needed: int) -> None:
        self.states[version] = {k: v.detach().clone() for k, v in state.items()}
        for v in [v for v in self.states if v < oldest_needed]:
            del self.states[v]

    @torch.no_grad()
    def logprobs(self, batch: RolloutBatch) -> torch.Tensor:
        out = torch.zeros(batch.ids.shape, dtype=torch.float32)
        for v in sorted({int(v) for v in batch.versions[batch.loss_mask].unique()}):
            self.model.load_state_dict(self.states[v])
            where = batch.versions == v
            out[where] = policy_logprobs(self.model, batch.ids)[where]
        return out


def _config(model_config: dict):
    from transformers import AutoConfig

    d = dict(model_config)
    return AutoConfig.for_model(d.pop("model_type"), **d)


def run(config: RunConfig, *, snapshot_root: Path | None = None) -> dict:
    """Runs one cell end to end and returns its result record (see `write_result`)."""
    torch.set_num_threads(1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="async-rl-", dir=snapshot_root) as tmp:
        snapshot_dir = Path(tmp) / "snapshots"
        server_config = ServerConfig(
            snapshot_dir=snapshot_dir,
            port=0,
            retention_window=retention_window(config),
            ewma_beta=config.effective_beta,
            scan_interval_s=3600.0,  # every version is registered by PublishVersion
        )
        server = ServerThread(server_config).start()
        try:
            with LogitClient(server.address, timeout_s=120) as client, ExitStack() as resources:
                record = _loop(config, client, snapshot_dir, resources)
        finally:
            server.stop()
    record["wall_s"] = time.perf_counter() - started
    return record


def _loop(config: RunConfig, client: LogitClient, snapshot_dir: Path, resources: ExitStack) -> dict:
    k, seed = config.staleness, config.seed
    torch.manual_seed(seed)
    from transformers import AutoModelForCausalLM

    model_config = tiny_qwen2_config(
        vocab_size=VOCAB_SIZE, hidden_size=config.hidden_size, layers=config.layers, max_positions=64,
        heads=config.attention_heads, kv_heads=min(2, config.attention_heads),
    )  # fmt: skip
    trainer = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32).eval()
    model_dict = trainer.config.to_dict()
    optimizer = torch.optim.AdamW(trainer.parameters(), lr=config.effective_lr)
    task = ReversalTask(config.digits, config.turns, config.alphabet)
    _warm_start(trainer, task, config)
    prompts = torch.Generator().manual_seed(20_000 + seed)
    eval_strings = task.sample_strings(config.eval_prompts, torch.Generator().manual_seed(99_999))
    engine = _rollout_engine(config, model_dict, task)
    references = _References(model_dict)
    route = OldLogprobs(config, client)
    loss_config = DecoupledPPOConfig(
        clip_eps_low=config.clip_eps, clip_eps_high=config.clip_eps, is_cap=config.is_cap,
        mask_low=config.window[0], mask_high=config.window[1],
    )  # fmt: skip
    num_segments = max(k, 1)

    def new_batch(start: int) -> RolloutBatch:
        strings = task.sample_strings(config.prompts_per_version, prompts).repeat_interleave(config.group_size, dim=0)
        return engine.new_batch(start, strings, num_segments, tag=f"s{seed}")

    started = time.perf_counter()
    digests = {0: client.publish(0, trainer.state_dict(), snapshot_dir, model_config=model_dict).digest}
    snapshot_bytes = (snapshot_dir / snapshot_dirname(0) / "model.safetensors").stat().st_size
    first_publish_s = time.perf_counter() - started
    references.keep(0, trainer.state_dict(), 0)
    if not isinstance(engine, RolloutEngine):  # vLLM: the engine starts on version 0, outside every timing
        resources.callback(engine.close)
        engine.load(0, snapshot_dir / snapshot_dirname(0), digests[0])

    inflight: dict[int, RolloutBatch] = {}
    per_version: list[dict] = []
    initial_reward = greedy_reward(trainer, task, eval_strings)
    for n in range(config.versions):
        times = dict(rollout_s=0.0, stall_s=0.0, old_wait_s=0.0, train_s=0.0, publish_s=0.0, eval_s=0.0, metrics_s=0.0)
        # --- rollout side: switch weights at the interruption point, then one segment per batch in flight
        t0 = time.perf_counter()
        route.submit_s = 0.0
        if isinstance(engine, RolloutEngine):
            engine.sync(n, trainer.state_dict())
        else:
            engine.load(n, snapshot_dir / snapshot_dirname(n), digests[n])
        starts = range(-k, 1) if n == 0 else [n]
        for s in starts:
            inflight[s] = new_batch(s)
        for s in sorted(inflight):
            batch = inflight[s]
            # At version 0, batches "started" before it catch up under v0 (a pipeline filling up).
            todo = min(1 - s, len(batch.segments)) if n == 0 else 1
            for _ in range(todo):
                if not batch.done:
                    route.on_segment(batch, engine.generate_segment(batch))
        times["rollout_s"] = time.perf_counter() - t0
        times["submit_s"] = route.submit_s
        times["stall_s"] = route.before_switch(n)

        # --- trainer side: the batch started k versions ago
        batch = inflight.pop(n - k)
        assert batch.done, "a consumed batch must be fully generated"
        mask = batch.loss_mask
        reward = task.reward(batch.ids, batch.strings)
        advantages = group_advantages(reward, config.group_size)[:, None].expand(batch.ids.shape)
        proximal = route.proximal(batch, n, trainer, policy_logprobs)
        times["old_wait_s"] = proximal.wait_s

        t0 = time.perf_counter()
        metrics_steps = []
        anchor = proximal.logprobs
        for u in range(config.effective_updates):
            trainer.train()
            policy = policy_logprobs(trainer, batch.ids)
            if anchor is None:  # loglinear: interpolate μ and the detached current policy (AReaL, A-3PO)
                anchor = _loglinear(policy.detach(), batch, n)
            out = decoupled_ppo_loss(
                policy_logprobs=policy, proximal_logprobs=anchor, behavior_logprobs=batch.behavior_logprobs,
                advantages=advantages, loss_mask=mask, config=loss_config,
                sources=proximal.sources, ewma_logprobs=anchor if proximal.sources is not None else None,
                versions=batch.versions, current_version=n,
            )  # fmt: skip
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
            trainer.eval()
            metrics_steps.append(out.metrics)
        times["train_s"] = time.perf_counter() - t0

        # --- metrics against the ground truth π_θv (outside every timing above)
        t0 = time.perf_counter()
        truth = references.logprobs(batch)
        row = _batch_metrics(config, client, batch, truth, anchor, proximal, metrics_steps, n, route)
        times["metrics_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        digests[n + 1] = client.publish(n + 1, trainer.state_dict(), snapshot_dir, model_config=model_dict).digest
        times["publish_s"] = time.perf_counter() - t0
        references.keep(n + 1, trainer.state_dict(), oldest_needed=n + 1 - k)
        retained = sum(1 for v in client.list_versions().versions if v.state == "retained")

        t0 = time.perf_counter()
        row["eval_reward"] = greedy_reward(trainer, task, eval_strings)
        times["eval_s"] = time.perf_counter() - t0
        row.update(version=n, train_reward=float(reward.mean()), retained_versions=retained, **times)
        per_version.append(row)
    record = _summary(config, per_version, initial_reward, snapshot_bytes, first_publish_s)
    if not isinstance(engine, RolloutEngine):  # only there: torch-engine records stay as they were
        record["rollout_engine"] = {
            "name": "vllm", "vllm_version": engine.vllm_version, "dtype": config.vllm_dtype,
            "start_s": engine.start_s, "engine_reused": engine.reused,  # reused: started by an earlier cell
        }  # fmt: skip
    return record


def _rollout_engine(config: RunConfig, model_dict: dict, task: ReversalTask):
    if config.rollout_engine == "vllm":
        from .vllm_engine import VllmRolloutEngine  # imports vLLM, when it starts

        return VllmRolloutEngine(task, dtype=config.vllm_dtype, seed=config.seed, max_model_len=model_dict["max_position_embeddings"])
    return RolloutEngine(model_dict, task, logit_noise=config.logit_noise, seed=config.seed)


def _warm_start(model: torch.nn.Module, task: ReversalTask, config: RunConfig) -> None:
    """Supervised steps on demonstrations (every turn answered correctly): the policy RL starts from."""
    if not config.warmstart_steps:
        return
    generator = torch.Generator().manual_seed(30_000 + config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    positions = task.layout.generated_positions()
    model.train()
    for _ in range(config.warmstart_steps):
        strings = task.sample_strings(32, generator)
        ids = task.start(strings)
        ids[:, positions[: task.layout.digits]] = strings[:, 0].flip(dims=[1])
        if task.layout.turns == 2:
            task.fill_environment(ids, strings)
            ids[:, positions[task.layout.digits :]] = strings[:, 1].flip(dims=[1])
        loss = -policy_logprobs(model, ids)[:, positions].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def _loglinear(policy: torch.Tensor, batch: RolloutBatch, current: int) -> torch.Tensor:
    """log π_prox ≈ log μ + α (log π_θ − log μ), α = (v_prox − v_behav)/(v_θ − v_behav) per token, with
    v_prox = the current version and v_θ = the one this update makes (AReaL's `loglinear`)."""
    v = batch.versions.clamp(min=0).to(torch.float32)
    alpha = (current - v) / (current + 1 - v)
    mu = batch.behavior_logprobs
    return torch.where(batch.loss_mask, mu + alpha * (policy - mu), torch.zeros_like(mu))


def _batch_metrics(config, client, batch, truth, anchor, proximal: Proximal, steps, n, route) -> dict:
    mask = batch.loss_mask
    mu = batch.behavior_logprobs
    row = {
        "masked_frac": steps[0]["discrepancy/masked_frac"],
        "clip_frac": float(np.mean([m["loss/clipfrac"] for m in steps])),
        "is_capped_frac": steps[0]["discrepancy/is_capped_frac"],
        "disc_abs": float((truth - mu)[mask].abs().mean()),
        "anchor_disc_abs": float((anchor.detach() - mu)[mask].abs().mean()),
        "staleness_mean": steps[0]["staleness/mean_versions"],
        "route": proximal.route,
        "tokens_scored": proximal.tokens_scored,
        "old_logprobs_sha256": _digest(anchor[mask]),
    }
    if config.arm == "adaptive":  # null when nothing could be checked
        row["spot_check_error"] = route.last_spot_error if math.isfinite(route.last_spot_error) else None
    exact_error = float((anchor.detach() - truth)[mask].abs().max())
    row["exact_max_err"] = exact_error if proximal.route == "exact" else None  # null: not an exact anchor
    if proximal.route == "exact" and config.arm in EXACT_ARMS + ("sync",) and exact_error > EXACT_TOLERANCE:
        raise AssertionError(f"{config.arm}: exact old log-probs are {exact_error:.2e} from a direct forward")
    if proximal.route == "ewma":
        row["ewma_abs_err"] = float((anchor.detach() - truth)[mask].abs().mean())
    else:  # what the EWMA route would have answered here, on a few sequences
        m = slice(0, min(config.metrics_sequences, batch.ids.shape[0]))
        wait_for_ewma(client, n)
        ewma, _, _ = score_trajectories(client, batch, m, force_ewma=True)
        row["ewma_abs_err"] = float((ewma - truth[m])[mask[m]].abs().mean())
    return row


def _summary(config: RunConfig, rows: list[dict], initial_reward: float, snapshot_bytes: int, first_publish_s: float) -> dict:
    def mean(key: str) -> float:
        return _finite_mean([r[key] for r in rows])

    exact_errors = [r["exact_max_err"] for r in rows if r["exact_max_err"] is not None]
    wait = sum(r["old_wait_s"] for r in rows)
    scored = sum(r["tokens_scored"] for r in rows)
    digest = hashlib.sha256("".join(r["old_logprobs_sha256"] for r in rows).encode()).hexdigest()
    retained_extra = max(r["retained_versions"] for r in rows) - 1
    return {
        "args": config.record_args(),
        "effective": {
            "lr": config.effective_lr,
            "updates_per_version": config.effective_updates,
            "ewma_beta": config.effective_beta,
            "ewma_tolerance": config.effective_tolerance,
            "retention_window": retention_window(config),
        },
        "auc": mean("eval_reward"),
        "final_reward": rows[-1]["eval_reward"],
        "initial_reward": initial_reward,
        "masked_frac_mean": mean("masked_frac"),
        "clip_frac_mean": mean("clip_frac"),
        "disc_abs_mean": mean("disc_abs"),
        "anchor_disc_abs_mean": mean("anchor_disc_abs"),
        "ewma_abs_err_mean": mean("ewma_abs_err"),
        "exact_frac": float(np.mean([r["route"] == "exact" for r in rows])),
        "system": {
            "old_wait_s_per_version": wait / len(rows),
            "rollout_stall_s_per_switch": mean("stall_s"),
            "submit_s_per_version": mean("submit_s"),
            "snapshot_bytes": snapshot_bytes,
            "extra_snapshot_bytes_held": retained_extra * snapshot_bytes,
            "tokens_scored_per_s": scored / wait if wait > 0 else 0.0,
            "exact_max_err": max(exact_errors) if exact_errors else None,  # null: no exact anchor in the run
            "version_s": float(np.mean([sum(r[k] for k in _PHASES) for r in rows])),
            "first_publish_s": first_publish_s,
        },
        "old_logprobs_sha256": digest,
        "per_version": rows,
    }


_PHASES = ("rollout_s", "stall_s", "old_wait_s", "train_s", "publish_s")
"""Phases of the pipeline proper; eval and metrics are the experiment's own and excluded."""

"""The rollout side on a real vLLM engine, through the project's adapter (`logit_client.vllm_rollout`).

The batches and segments are the emulated engine's (`rollout.py`): a batch started at version s is
generated in k segments under s, s+1, …, s+k−1, every token tagged with the version that sampled it.
Here each segment is one vLLM request per trajectory whose prompt is the trajectory so far, which is
how the adapter resumes an interrupted rollout under new weights. At every switch the engine loads the
version just published, from its snapshot directory with the digest the service registered, and the
behaviour log-probs μ_v are vLLM's own (the sampled token's processed log-prob), so the train–inference
discrepancy |log π_θv − log μ_v| is that of a real engine rather than an emulation.

The engine runs in this process (no engine-core or worker process: each would import vLLM and torch
again, minutes on a busy 2-core machine) and is shared by the cells one process runs (`run --arm a,b`):
each cell starts it on its own version 0, by the same digest-checked reload as every later switch.
Every request carries its own seed, so a cell's tokens do not depend on what ran before it.

vLLM is imported only here, and only when the engine starts; it needs its own environment (`.venv-vllm`).
"""

from __future__ import annotations

import atexit
import gc
import os
import time
from pathlib import Path

import numpy as np
import torch

from .rollout import RolloutBatch, new_batch
from .task import ReversalTask

ENGINE_KWARGS: dict = dict(
    enforce_eager=True,  # no graph capture or compilation: a tiny model, and a start in seconds
    max_num_seqs=64,  # a batch is 32 trajectories; all of one segment run in the same engine steps
    distributed_executor_backend="uni",  # in this process (with VLLM_ENABLE_V1_MULTIPROCESSING=0)
)
_ENVIRONMENT = {
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB, reserved up front; ample for 64 trajectories of < 64 tokens
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # the engine core in this process
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",  # in-process: leave the trainer's threads where they are
}
_ENGINES: dict[tuple, object] = {}
"""Started engines (adapters) by (dtype, max_model_len, model config hash), shared by this process's cells."""


def shutdown_engines() -> None:
    """Stops every engine this process started (also run at exit)."""
    while _ENGINES:
        _, adapter = _ENGINES.popitem()
        engine = adapter.llm.llm_engine
        stop = getattr(engine, "shutdown", None) or getattr(getattr(engine, "engine_core", None), "shutdown", None)
        if stop is not None:
            stop()
    gc.collect()


atexit.register(shutdown_engines)


def _warm_up(adapter) -> None:
    """A first generation, so its one-off cost (kernel set-up; minutes on a busy CPU) is counted in the
    engine start and not in the first version's rollout time. Its own seed: no cell's draws move."""
    from vllm import SamplingParams

    from logit_client.rollout import Rollout

    prompts = [Rollout([0] * n, sample_id="warm-up") for n in (3, 7)]
    adapter.generate(prompts, SamplingParams(max_tokens=4, seed=0, ignore_eos=True))


class VllmRolloutEngine:
    """Samples with a vLLM engine; weights arrive by `load(version, snapshot, digest)` from the service."""

    def __init__(self, task: ReversalTask, *, dtype: str, seed: int, max_model_len: int) -> None:
        self.task = task
        self.dtype = dtype
        self.seed = seed
        self.max_model_len = max_model_len
        self.adapter = None
        self.start_s = 0.0
        self.reused = False
        # One seed per request: the 8 samples of a group share their prompt, and vLLM's per-request
        # generator makes every run of a cell draw the same tokens.
        self._seeds = np.random.default_rng(10_000 + seed)

    def new_batch(self, start_version: int, strings: torch.Tensor, num_segments: int, tag: str) -> RolloutBatch:
        return new_batch(self.task, start_version, strings, num_segments, tag)

    @property
    def version(self) -> int | None:
        return None if self.adapter is None else self.adapter.policy_version

    @property
    def vllm_version(self) -> str:
        import vllm

        return vllm.__version__

    def load(self, version: int, snapshot: Path, digest: str) -> None:
        """At an interruption point: loads the published version (starting the engine on the first)."""
        if self.adapter is None:
            self._start(snapshot, digest)
        elif self.adapter.policy_version != version:
            self.adapter.load_version(snapshot, policy_version=version, digest=digest)
        if self.adapter.policy_version != version:
            raise RuntimeError(f"the vLLM engine holds version {self.adapter.policy_version}, not {version}")

    def _start(self, snapshot: Path, digest: str) -> None:
        for name, value in _ENVIRONMENT.items():
            os.environ.setdefault(name, value)
        from logit_client.vllm_rollout import VllmRollout, verify_snapshot_dir

        started = time.perf_counter()
        verified = verify_snapshot_dir(snapshot, policy_version=0, digest=digest)
        key = (self.dtype, self.max_model_len, verified.manifest.model_config_hash)
        self.reused = key in _ENGINES
        if self.reused:  # an earlier cell's engine: its version 0 by the same reload as every switch
            _ENGINES[key].load_version(snapshot, policy_version=0, digest=digest)
        else:
            kwargs = dict(ENGINE_KWARGS, max_model_len=self.max_model_len)
            _ENGINES[key] = VllmRollout.from_snapshot(snapshot, dtype=self.dtype, seed=self.seed, engine_kwargs=kwargs)
            _warm_up(_ENGINES[key])
        self.adapter = _ENGINES[key]
        self.start_s = time.perf_counter() - started

    def generate_segment(self, batch: RolloutBatch) -> int:
        """Generates the batch's next segment under the engine's current version; returns its index."""
        from vllm import SamplingParams

        from logit_client.rollout import Rollout

        assert self.adapter is not None and not batch.done
        j = batch.next_segment
        layout = self.task.layout
        version = self.adapter.policy_version
        positions = batch.segments[j]
        # A segment spans the environment's answer in the two-turn task: one request per side of it.
        for run in np.split(positions, np.flatnonzero(np.diff(positions) != 1) + 1):
            first, count = int(run[0]), len(run)
            if layout.turns == 2 and first > layout.env_start and not batch.env_filled:
                self.task.fill_environment(batch.ids, batch.strings)
                batch.env_filled = True
            prompts = [Rollout(batch.ids[i, :first].tolist(), sample_id=sid) for i, sid in enumerate(batch.sample_ids)]
            params = [
                # ignore_eos: the layout is fixed-length; temperature 1, so μ is the engine's softmax.
                SamplingParams(max_tokens=count, temperature=1.0, seed=int(s), ignore_eos=True)
                for s in self._seeds.integers(0, 2**31 - 1, size=len(prompts))
            ]
            for i, rollout in enumerate(self.adapter.generate(prompts, params)):
                if rollout.num_generated != count or set(rollout.versions) != {version}:
                    raise RuntimeError(
                        f"vLLM returned {rollout.num_generated} tokens of versions {set(rollout.versions)} for "
                        f"{count} positions under version {version}"
                    )
                batch.ids[i, run] = torch.tensor(rollout.token_ids, dtype=torch.long)
                batch.versions[i, run] = version
                batch.behavior_logprobs[i, run] = torch.tensor(rollout.behavior_logprobs, dtype=torch.float32)
        batch.segment_versions.append(version)
        batch.next_segment += 1
        return j

    def close(self) -> None:
        """Done with the engine; it stays up for the process's next cell (`shutdown_engines` stops it)."""
        self.adapter = None

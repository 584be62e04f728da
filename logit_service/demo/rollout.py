"""A rollout worker for the demo: samples with lagging weights, like an inference engine would.

It runs the policy in bfloat16 (inference-side numerics, so behaviour log-probs μ really differ from
the trainer's float32 ones), receives weights `sync_lag` versions late, and only picks up a
newer version at interruption points every `segment_tokens` tokens, so one response can span several
versions: a partial rollout.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from logit_service.backends.torch_backend import build_model
from logit_service.snapshots.manifest import snapshot_dirname


@dataclass
class Rollout:
    sample_id: str
    token_ids: np.ndarray  # int64 [prompt + response]
    versions: np.ndarray  # int64, -1 on prompt tokens, else the version that sampled the token
    behavior_logprobs: np.ndarray  # float32, NaN on prompt tokens
    prompt_len: int


class RolloutWorker(threading.Thread):
    def __init__(
        self,
        *,
        snapshot_dir: Path,
        model_config: dict,
        published: "PublishedVersion",
        out: "queue.Queue[Rollout]",
        prompt_len: int = 8,
        response_len: int = 48,
        segment_tokens: int = 12,
        temperature: float = 1.0,
        sync_lag: int = 2,
        seed: int = 0,
    ) -> None:
        super().__init__(name="rollout", daemon=True)
        self.snapshot_dir = snapshot_dir
        self.model_config = model_config
        self.published = published
        self.out = out
        self.prompt_len = prompt_len
        self.response_len = response_len
        self.segment_tokens = segment_tokens
        self.temperature = temperature
        self.sync_lag = sync_lag
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self._version: int | None = None
        self._model = build_model(model_config, dtype="bfloat16", device="cpu", attn_implementation="sdpa")

    def _refresh(self) -> None:
        """An interruption point: load the newest published version, as an engine's weight sync would."""
        # Weight sync to inference engines lags in real clusters: the engine runs `sync_lag` versions
        # behind the trainer's newest.
        latest = max(0, self.published.get() - self.sync_lag)
        if latest == self._version:
            return
        from safetensors.torch import load_file

        path = self.snapshot_dir / snapshot_dirname(latest) / "model.safetensors"
        self._model.load_state_dict(load_file(str(path)))
        self._version = latest

    @torch.inference_mode()
    def _sample_one(self, index: int) -> Rollout:
        vocab = int(self.model_config["vocab_size"])
        ids = [int(t) for t in self.rng.integers(0, vocab, self.prompt_len)]
        versions = [-1] * self.prompt_len
        behavior = [float("nan")] * self.prompt_len
        for t in range(self.response_len):
            if t % self.segment_tokens == 0:
                self._refresh()
            logits = self._model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].float()
            logprobs = torch.log_softmax(logits / self.temperature, dim=-1)
            token = int(torch.multinomial(logprobs.exp(), 1, generator=self.generator))
            ids.append(token)
            versions.append(self._version)
            behavior.append(float(logprobs[token]))
        return Rollout(
            sample_id=f"rollout-{index}",
            token_ids=np.array(ids, dtype=np.int64),
            versions=np.array(versions, dtype=np.int64),
            behavior_logprobs=np.array(behavior, dtype=np.float32),
            prompt_len=self.prompt_len,
        )

    def run(self) -> None:
        index = 0
        try:
            while not self.stop_event.is_set():
                rollout = self._sample_one(index)
                index += 1
                while not self.stop_event.is_set():
                    try:
                        self.out.put(rollout, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # surfaced by the trainer, which owns the exit code
            self.error = e


class PublishedVersion:
    """The newest version the trainer has published; read by rollout workers."""

    def __init__(self, version: int) -> None:
        self._version = version
        self._lock = threading.Lock()

    def get(self) -> int:
        with self._lock:
            return self._version

    def set(self, version: int) -> None:
        with self._lock:
            self._version = version

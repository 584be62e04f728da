"""The vLLM rollout adapter: generation that stamps every token with the policy version that produced it.

It owns the engine's weights (which version is loaded, loaded only from a digest-checked snapshot), the
interruption and resumption of partial rollouts at a version switch, and the leases that keep their
versions servable until the trajectories are handed over. It does not train, publish or score (it may
submit segments for the service to score). The only module of the client that imports vLLM, and only
when it is used.

Both engines are covered: `VllmRollout` drives `vllm.LLM` step by step, `AsyncVllmRollout` the asyncio
`AsyncLLM`. A token's version is the engine's version when vLLM returned the token; weights change only
after every in-flight request has been stopped and its tokens collected, so no token can be stamped with
a version other than the one that sampled it.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import logging
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from logit_common.snapshots.manifest import Manifest, read_manifest, verify_snapshot

from .rollout import Rollout

logger = logging.getLogger(__name__)

__all__ = ["AsyncVllmRollout", "LeaseBook", "Rollout", "VerifiedSnapshot", "VllmRollout", "verify_snapshot_dir"]


@dataclass(frozen=True)
class VerifiedSnapshot:
    """A snapshot directory whose every file matched its manifest when it was checked."""

    path: Path
    manifest: Manifest

    @property
    def policy_version(self) -> int:
        return self.manifest.policy_version

    @property
    def digest(self) -> str:
        return self.manifest.digest


def verify_snapshot_dir(path: str | Path, *, policy_version: int | None = None, digest: str | None = None) -> VerifiedSnapshot:
    """Checks every file of a published snapshot against its manifest (and against the version and digest
    the service reported, when given); raises SnapshotCorrupt or ValueError otherwise."""
    path = Path(path)
    manifest = read_manifest(path)
    if manifest.kind != "version":
        raise ValueError(f"{path} is a {manifest.kind!r} snapshot, not a policy version")
    if policy_version is not None and manifest.policy_version != policy_version:
        raise ValueError(f"{path} holds version {manifest.policy_version}, not {policy_version}")
    if digest is not None and manifest.digest != digest:
        raise ValueError(f"{path} has digest {manifest.digest}, but the service published {digest}")
    verify_snapshot(path, manifest)
    return VerifiedSnapshot(path, manifest)


def _engine_kwargs(path: Path, dtype: str, seed: int, overrides: dict[str, Any]) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(
        dtype=dtype,
        seed=seed,
        skip_tokenizer_init=True,  # token ids in, token ids out
        # "processed": the sampled token's log-prob under the distribution it was drawn from
        # (temperature, top-k/p applied), i.e. μ. The default "raw" would ignore the temperature.
        logprobs_mode="processed_logprobs",
    )
    config = json.loads((path / "config.json").read_text())
    if not config.get("architectures"):
        # vLLM picks its implementation by class name; a config saved from `from_config` often has none.
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        kwargs["hf_overrides"] = {"architectures": [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config["model_type"]]]}
    kwargs.update(overrides)
    return kwargs


def _sampling_params(params: Any, rollout: Rollout) -> Any:
    """The caller's SamplingParams for the rest of this rollout: remaining token budget, per-token
    deltas, the sampled token's log-prob, ids only."""
    from vllm.sampling_params import RequestOutputKind

    remaining = params.clone()
    if params.max_tokens is not None:
        remaining.max_tokens = params.max_tokens - rollout.num_generated
    if rollout.num_generated and remaining.min_tokens:
        remaining.min_tokens = max(0, params.min_tokens - rollout.num_generated)
    remaining.output_kind = RequestOutputKind.DELTA
    remaining.logprobs = 0 if params.logprobs is None else params.logprobs
    remaining.detokenize = False
    return remaining


def _check_logprobs_mode(model_config: Any) -> None:
    """μ must be the log-prob under the distribution tokens were drawn from; vLLM's default ("raw")
    ignores temperature and top-k/p, so an engine built elsewhere must use processed log-probs."""
    mode = getattr(model_config, "logprobs_mode", None)
    if mode is not None and str(getattr(mode, "value", mode)) != "processed_logprobs":
        raise ValueError(
            f"the engine reports logprobs_mode={mode!r}; build it with logprobs_mode='processed_logprobs' "
            "so behaviour log-probs include temperature and top-k/p (from_snapshot does)"
        )


def _check_params(params: Any) -> None:
    if params.n != 1:
        raise ValueError("give one Rollout per sample (n=1); groups are several rollouts of one prompt")
    if params.max_tokens is None:
        raise ValueError("SamplingParams.max_tokens must be set: resumed rollouts need a remaining budget")


def _sampled_logprobs(completion: Any) -> list[float]:
    """log μ of each newly sampled token, from vLLM's per-position log-prob entries."""
    entries = completion.logprobs
    if entries is None or len(entries) != len(completion.token_ids):
        raise RuntimeError("vLLM returned no log-prob for a sampled token; logprobs must be requested")
    return [float(entries[i][token].logprob) for i, token in enumerate(completion.token_ids)]


def _by_temperature(segments: list[tuple[Rollout, Any]]) -> list[tuple[float, list[tuple[Rollout, Any]]]]:
    """Segments grouped by the temperature their rollout sampled at: each is scored at its own."""
    groups: dict[float, list[tuple[Rollout, Any]]] = {}
    for rollout, seg in segments:
        groups.setdefault(rollout.temperature, []).append((rollout, seg))
    return list(groups.items())


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class LeaseBook:
    """Leases on the service for the versions of partial rollouts, counted per rollout.

    A version is leased when the first unfinished rollout holding its tokens is interrupted and released
    when the last such rollout is handed over; works with the sync and the asyncio client."""

    def __init__(self, client: Any | None, holder: str, ttl_s: float) -> None:
        self.client = client
        self.holder = holder
        self.ttl_s = ttl_s
        self._by_rollout: dict[int, tuple[int, ...]] = {}
        self._count: Counter[int] = Counter()

    @property
    def leased_versions(self) -> tuple[int, ...]:
        return tuple(sorted(v for v, n in self._count.items() if n > 0))

    def _plan_hold(self, rollouts: Iterable[Rollout]) -> tuple[list[Rollout], list[int]]:
        fresh = [r for r in rollouts if id(r) not in self._by_rollout and r.versions]
        held = [r for r in rollouts if id(r) in self._by_rollout]
        needed = {v for r in fresh for v in r.generated_versions}
        needed |= {v for r in held for v in r.generated_versions if v not in self._by_rollout[id(r)]}
        return [*fresh, *held], sorted(v for v in needed if self._count[v] == 0)

    def _record_hold(self, rollouts: list[Rollout]) -> None:
        for r in rollouts:
            before = set(self._by_rollout.get(id(r), ()))
            now = set(r.generated_versions)
            for v in now - before:
                self._count[v] += 1
            self._by_rollout[id(r)] = tuple(sorted(now | before))

    def _plan_release(self, rollouts: Iterable[Rollout]) -> list[int]:
        done = []
        for r in rollouts:
            for v in self._by_rollout.pop(id(r), ()):
                self._count[v] -= 1
                if self._count[v] == 0:
                    del self._count[v]
                    done.append(v)
        return sorted(done)

    def hold(self, rollouts: Iterable[Rollout]) -> None:
        """Leases (all or nothing) the versions these rollouts were generated with."""
        rollouts, new = self._plan_hold(list(rollouts))
        if new and self.client is not None:
            self.client.lease_versions(new, holder=self.holder, ttl_s=self.ttl_s)
        self._record_hold(rollouts)

    async def hold_async(self, rollouts: Iterable[Rollout]) -> None:
        rollouts, new = self._plan_hold(list(rollouts))
        if new and self.client is not None:
            await _maybe_await(self.client.lease_versions(new, holder=self.holder, ttl_s=self.ttl_s))
        self._record_hold(rollouts)

    def release(self, rollouts: Iterable[Rollout]) -> None:
        done = self._plan_release(rollouts)
        if done and self.client is not None:
            self.client.release_versions(done, holder=self.holder)

    async def release_async(self, rollouts: Iterable[Rollout]) -> None:
        done = self._plan_release(rollouts)
        if done and self.client is not None:
            await _maybe_await(self.client.release_versions(done, holder=self.holder))

    def renew(self) -> None:
        """Extends every lease by ttl_s; call more often than ttl_s while rollouts stay partial."""
        if self.leased_versions and self.client is not None:
            self.client.lease_versions(self.leased_versions, holder=self.holder, ttl_s=self.ttl_s)


class _AdapterBase:
    def __init__(
        self,
        snapshot: VerifiedSnapshot,
        *,
        client: Any | None,
        holder: str,
        lease_ttl_s: float,
        submit_segments: bool,
    ) -> None:
        self._snapshot = snapshot
        self.client = client
        self.leases = LeaseBook(client, holder, lease_ttl_s)
        self.submit_segments = submit_segments
        if submit_segments and client is None:
            raise ValueError("submit_segments needs a client")
        self._request_ids = itertools.count()

    @property
    def policy_version(self) -> int:
        """The version of the weights the engine holds now."""
        return self._snapshot.policy_version

    @property
    def snapshot(self) -> VerifiedSnapshot:
        return self._snapshot

    def _check_compatible(self, new: VerifiedSnapshot) -> None:
        if new.manifest.model_config_hash != self._snapshot.manifest.model_config_hash:
            raise ValueError(
                f"{new.path} is another architecture (config hash {new.manifest.model_config_hash[:12]}, "
                f"the engine runs {self._snapshot.manifest.model_config_hash[:12]}); start a new engine for it"
            )

    def _segments(self, rollouts: Iterable[Rollout]) -> list[tuple[Rollout, Any]]:
        return [(r, seg) for r in rollouts if (seg := r.pending_segment()) is not None]

    def _next_request_id(self, rollout: Rollout) -> str:
        return f"{rollout.sample_id or 'rollout'}-{next(self._request_ids)}"


class VllmRollout(_AdapterBase):
    """Rollouts on a `vllm.LLM`, driven step by step so a version switch can interrupt them.

    `request_version(path)` (from any thread, or from `on_step`) asks for a switch; at the next engine
    step the in-flight requests are aborted with their tokens kept, their versions leased, the finished
    segments submitted (if enabled), the new weights loaded, and every interrupted rollout resumed with
    its prefix under the new version.
    """

    def __init__(
        self,
        llm: Any,
        snapshot: VerifiedSnapshot,
        *,
        client: Any | None = None,
        holder: str = "vllm-rollout",
        lease_ttl_s: float = 600.0,
        submit_segments: bool = False,
    ) -> None:
        super().__init__(snapshot, client=client, holder=holder, lease_ttl_s=lease_ttl_s, submit_segments=submit_segments)
        _check_logprobs_mode(getattr(getattr(llm, "llm_engine", None), "model_config", None))
        self.llm = llm
        self._lock = threading.Lock()
        self._requested: VerifiedSnapshot | None = None

    @classmethod
    def from_snapshot(
        cls,
        path: str | Path,
        *,
        dtype: str = "float32",
        seed: int = 0,
        engine_kwargs: dict[str, Any] | None = None,
        **adapter_kwargs: Any,
    ) -> VllmRollout:
        """Starts a `vllm.LLM` on a verified snapshot directory (it loads the HF directory as it is)."""
        from vllm import LLM

        snapshot = verify_snapshot_dir(path)
        llm = LLM(model=str(snapshot.path), **_engine_kwargs(snapshot.path, dtype, seed, dict(engine_kwargs or {})))
        return cls(llm, snapshot, **adapter_kwargs)

    # --- versions ---------------------------------------------------------------------------------

    def request_version(self, path: str | Path, *, policy_version: int | None = None, digest: str | None = None) -> VerifiedSnapshot:
        """Verifies a published snapshot now and switches to it at the next step of a running `generate`
        (or when the next `generate` starts)."""
        snapshot = verify_snapshot_dir(path, policy_version=policy_version, digest=digest)
        self._check_compatible(snapshot)
        with self._lock:
            self._requested = snapshot
        return snapshot

    def load_version(self, path: str | Path, *, policy_version: int | None = None, digest: str | None = None) -> None:
        """Loads a verified snapshot now; only between `generate` calls (use `request_version` during one)."""
        snapshot = verify_snapshot_dir(path, policy_version=policy_version, digest=digest)
        self._check_compatible(snapshot)
        self._reload(snapshot)

    def _reload(self, snapshot: VerifiedSnapshot) -> None:
        # Weights are overwritten in place; cached KV blocks of the old weights must never be reused.
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(snapshot.path)})
        self.llm.reset_prefix_cache()
        logger.info("rollout engine: version %d -> %d", self.policy_version, snapshot.policy_version)
        self._snapshot = snapshot

    def _take_request(self) -> VerifiedSnapshot | None:
        with self._lock:
            snapshot, self._requested = self._requested, None
        return snapshot

    # --- generation -------------------------------------------------------------------------------

    def generate(
        self,
        rollouts: Sequence[Rollout | Sequence[int]],
        params: Any | Sequence[Any],
        *,
        on_step: Any | None = None,
    ) -> list[Rollout]:
        """Generates every rollout to completion (resuming partial ones), switching versions when asked.

        `rollouts` are Rollouts (a partial one resumes where it stopped) or prompts of token ids.
        `params` is one SamplingParams for all, or one per rollout (e.g. a seed per sample of a group).
        `on_step(adapter, rollouts)` runs after each engine step, e.g. to `request_version`.
        Returns the Rollouts in order; their leases are held until `hand_over`.
        """
        batch = [r if isinstance(r, Rollout) else Rollout(list(r), sample_id=str(i)) for i, r in enumerate(rollouts)]
        per_rollout = list(params) if isinstance(params, Sequence) else [params] * len(batch)
        if len(per_rollout) != len(batch):
            raise ValueError(f"{len(per_rollout)} SamplingParams for {len(batch)} rollouts")
        for rollout, p in zip(batch, per_rollout):
            _check_params(p)
            rollout.temperature = float(p.temperature)
        params_of = {id(r): p for r, p in zip(batch, per_rollout)}
        engine = self.llm.llm_engine
        active: dict[str, Rollout] = {}

        def add(rollout: Rollout) -> None:
            from vllm.inputs import TokensPrompt

            params = params_of[id(rollout)]
            if rollout.finished:
                return
            if params.max_tokens - rollout.num_generated <= 0:
                rollout.finished, rollout.finish_reason = True, "length"
                return
            request_id = self._next_request_id(rollout)
            active[request_id] = rollout
            prompt = TokensPrompt(prompt_token_ids=rollout.all_token_ids.tolist())
            engine.add_request(request_id, prompt, _sampling_params(params, rollout))

        pending = self._take_request()
        if pending is not None:
            self._reload(pending)
        for rollout in batch:
            add(rollout)
        while active:
            for output in engine.step():
                rollout = active.get(output.request_id)
                if rollout is None:
                    continue
                completion = output.outputs[0]
                # Stamped now, from the weights the engine holds during this step.
                rollout.append(completion.token_ids, _sampled_logprobs(completion), self.policy_version)
                if output.finished:
                    rollout.finished, rollout.finish_reason = True, completion.finish_reason
                    del active[output.request_id]
            self._submit([r for r in batch if r.finished])
            if on_step is not None:
                on_step(self, batch)
            switch_to = self._take_request()
            if switch_to is not None:
                interrupted = list(active.values())
                self._interrupt(engine, active)
                self._reload(switch_to)
                for rollout in interrupted:
                    add(rollout)
        return batch

    def _interrupt(self, engine: Any, active: dict[str, Rollout]) -> None:
        """Stops every in-flight request; what it generated stays in its Rollout with its versions."""
        interrupted = list(active.values())
        self.leases.hold(interrupted)  # before anything changes: a refused lease leaves the engine as it was
        engine.abort_request(list(active))
        active.clear()
        for rollout in interrupted:
            rollout.interruptions += 1
        self._submit(interrupted)

    def _submit(self, rollouts: Iterable[Rollout]) -> None:
        if not self.submit_segments:
            return
        segments = self._segments(rollouts)
        for temperature, group in _by_temperature(segments):
            self.client.submit_segments([seg for _, seg in group], temperature=temperature)
            for rollout, seg in group:
                rollout.submitted_until = len(seg.token_ids)

    def hand_over(self, rollouts: Iterable[Rollout]) -> None:
        """The trainer has taken (and scored) these rollouts: releases the leases only they held."""
        self.leases.release(rollouts)


class AsyncVllmRollout(_AdapterBase):
    """Rollouts on vLLM's asyncio engine (`AsyncLLM`): one coroutine per rollout, switches in between.

    `await switch_version(path)` pauses new requests, aborts the in-flight ones and waits until each has
    handed back its last tokens, leases their versions, loads the new weights, then lets every interrupted
    rollout resume with its prefix under the new version.
    """

    def __init__(
        self,
        engine: Any,
        snapshot: VerifiedSnapshot,
        *,
        client: Any | None = None,
        holder: str = "vllm-rollout",
        lease_ttl_s: float = 600.0,
        submit_segments: bool = False,
    ) -> None:
        super().__init__(snapshot, client=client, holder=holder, lease_ttl_s=lease_ttl_s, submit_segments=submit_segments)
        _check_logprobs_mode(getattr(engine, "model_config", None))
        self.engine = engine
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._switch_lock = asyncio.Lock()
        self._inflight: dict[str, Rollout] = {}
        self._interrupting: set[str] = set()
        self._drained = asyncio.Condition()

    @classmethod
    def from_snapshot(
        cls,
        path: str | Path,
        *,
        dtype: str = "float32",
        seed: int = 0,
        engine_kwargs: dict[str, Any] | None = None,
        **adapter_kwargs: Any,
    ) -> AsyncVllmRollout:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        snapshot = verify_snapshot_dir(path)
        args = AsyncEngineArgs(model=str(snapshot.path), **_engine_kwargs(snapshot.path, dtype, seed, dict(engine_kwargs or {})))
        return cls(AsyncLLM.from_engine_args(args), snapshot, **adapter_kwargs)

    def shutdown(self) -> None:
        self.engine.shutdown()

    async def generate(self, rollout: Rollout | Sequence[int], params: Any, *, sample_id: str = "") -> Rollout:
        """Generates one rollout to completion, across as many version switches as happen meanwhile.
        Run many concurrently (asyncio.gather); its leases are held until `hand_over`."""
        _check_params(params)
        from vllm.inputs import TokensPrompt

        if not isinstance(rollout, Rollout):
            rollout = Rollout(list(rollout), sample_id=sample_id)
        rollout.temperature = float(params.temperature)
        while not rollout.finished:
            if params.max_tokens - rollout.num_generated <= 0:
                rollout.finished, rollout.finish_reason = True, "length"
                break
            await self._resumed.wait()
            request_id = self._next_request_id(rollout)
            self._inflight[request_id] = rollout
            prompt = TokensPrompt(prompt_token_ids=rollout.all_token_ids.tolist())
            try:
                async for output in self.engine.generate(prompt, _sampling_params(params, rollout), request_id=request_id):
                    completion = output.outputs[0]
                    if completion.token_ids:
                        # Stamped on arrival: the version changes only once this stream has ended.
                        rollout.append(completion.token_ids, _sampled_logprobs(completion), self.policy_version)
                    # An abort of ours ends the stream with reason "abort": the rollout resumes later.
                    ours = completion.finish_reason == "abort" and request_id in self._interrupting
                    if output.finished and not ours:
                        rollout.finished, rollout.finish_reason = True, completion.finish_reason
            finally:
                self._interrupting.discard(request_id)
                del self._inflight[request_id]
                async with self._drained:
                    self._drained.notify_all()
        if self.submit_segments:
            await self._submit([rollout])
        return rollout

    async def switch_version(self, path: str | Path, *, policy_version: int | None = None, digest: str | None = None) -> VerifiedSnapshot:
        """Interrupts the in-flight rollouts, loads the verified snapshot and resumes them under it."""
        snapshot = await asyncio.to_thread(verify_snapshot_dir, path, policy_version=policy_version, digest=digest)
        self._check_compatible(snapshot)
        async with self._switch_lock:
            self._resumed.clear()
            try:
                interrupted = list(self._inflight.values())
                await self.leases.hold_async(interrupted)
                request_ids = list(self._inflight)
                self._interrupting.update(request_ids)
                if request_ids:
                    await self.engine.abort(request_ids)
                async with self._drained:
                    await self._drained.wait_for(lambda: not self._inflight)
                for rollout in interrupted:
                    rollout.interruptions += 1
                if self.submit_segments:
                    await self._submit(interrupted)
                await self.engine.collective_rpc("reload_weights", kwargs={"weights_path": str(snapshot.path)})
                await self.engine.reset_prefix_cache()
                logger.info("rollout engine: version %d -> %d", self.policy_version, snapshot.policy_version)
                self._snapshot = snapshot
            finally:
                self._resumed.set()
        return snapshot

    async def _submit(self, rollouts: Iterable[Rollout]) -> None:
        segments = self._segments(rollouts)
        for temperature, group in _by_temperature(segments):
            await _maybe_await(self.client.submit_segments([seg for _, seg in group], temperature=temperature))
            for rollout, seg in group:
                rollout.submitted_until = len(seg.token_ids)

    async def hand_over(self, rollouts: Iterable[Rollout]) -> None:
        """The trainer has taken (and scored) these rollouts: releases the leases only they held."""
        await self.leases.release_async(rollouts)

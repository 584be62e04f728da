"""The default backend: a transformers causal LM with training-side numerics, one version resident.

It owns the model and its resident weights; which version to load and when is the engine's call.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from logit_service.backends.probe import TOLERANCE_NATS, ProbeResult, choose_path, tiles_hold
from logit_service.backends.row_checks import RowCountChecks
from logit_service.backends.stop_check import Stopped, stop_between_layers
from logit_service.backends.tiles import fewest_rows, plan_tiles, tiles_have_room
from logit_service.errors import ModelRejected, NonFiniteLogprobs

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ScoreItem:
    """One sequence cut to the last position needed, and the positions to score in it."""

    token_ids: np.ndarray  # int64 [len]
    positions: np.ndarray  # int64 [n], each in [1, len)


def build_model(model_config: dict[str, Any], *, dtype: str, device: str, attn_implementation: str | None) -> torch.nn.Module:
    """The causal LM of a snapshot's config.json, built in `dtype` (the weights are loaded afterwards).

    The dtype is given at construction (`from_config(..., dtype=...)`), not by a cast afterwards:
    transformers then keeps buffers it computes in float32 (rotary `inv_freq`) in float32, as
    `from_pretrained(..., dtype=torch.bfloat16)` does; `model.to(torch.bfloat16)` would round them too.
    `attn_implementation=None` lets transformers choose for the architecture (sdpa where supported,
    else eager). Raises ModelRejected for anything transformers refuses.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config_dict = dict(model_config)
    model_type = config_dict.pop("model_type", None)
    if not model_type:
        raise ModelRejected("the snapshot's config.json names no model_type")
    # transformers reports a refusal with many exception types (ValueError, KeyError, ImportError,
    # AssertionError, its config validators' own); every one means this snapshot cannot be built here.
    try:
        config = AutoConfig.for_model(model_type, **config_dict)
    except Exception as e:
        raise ModelRejected(f"transformers cannot build a config for model_type {model_type!r}: {e}") from None
    try:
        # On the host whatever the calling thread's default device (a trainer may have set one), then moved.
        with torch.device("cpu"):
            model = AutoModelForCausalLM.from_config(config, dtype=_DTYPES[dtype], attn_implementation=attn_implementation)
    except Exception as e:
        chosen = "transformers' default" if attn_implementation is None else repr(attn_implementation)
        raise ModelRejected(
            f"transformers cannot build {model_type!r} as a causal LM with attention implementation {chosen}: {e}"
        ) from None
    return model.to(device).eval()


class TorchBackend:
    name = "torch"

    def __init__(
        self,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        attn_implementation: str | None = None,
        max_batch_tokens: int = 16384,
        logprob_chunk_tokens: int = 1024,
        batch_invariant: bool = True,
        tile_tokens: int = 2048,
        tile_rows: int = 8,
        shrink_partial_tiles: bool = False,
    ) -> None:
        self.dtype = dtype
        self.device = torch.device(device)
        self.attn_implementation = attn_implementation
        self.max_batch_tokens = max_batch_tokens
        self.logprob_chunk_tokens = logprob_chunk_tokens
        self.batch_invariant = batch_invariant
        self.tile_tokens = tile_tokens
        self.tile_rows = tile_rows
        self.shrink_partial_tiles = shrink_partial_tiles
        self.row_checks: RowCountChecks | None = None  # row counts a partial tile may shrink to, once checked
        self.tile_rows_forwarded = 0  # rows of every tile forwarded, and how many held a sequence (metrics)
        self.tile_rows_used = 0
        # Batch-invariant forwards in shared fixed-shape tiles (tiles.py), where the probe showed they
        # hold for this model; else each sequence alone. Why not, for the log.
        self.tiled = False
        self.untiled_reason: str | None = None
        self.model: torch.nn.Module | None = None  # set only once built, loaded and probed
        self.model_config_hash: str | None = None
        self.path = None  # the log-prob path the probe chose (paths.py)
        self.probe: ProbeResult | None = None
        self.resident_key: str | None = None
        self.resident_digest: str | None = None
        self.swaps = 0  # weight copies into the model since start, and their seconds (for the metrics)
        self.swap_seconds = 0.0
        # Publishing (I/O threads) and the first Score (compute thread) may both build the model.
        self._build_lock = threading.Lock()

    @property
    def vocab_size(self) -> int:
        assert self.model is not None
        return int(self.model.config.vocab_size)

    def ensure_model(self, model_config: dict[str, Any]) -> None:
        """Builds and probes the model with the weights its config initialises (tests, benchmarks)."""
        if self.model is None:
            self.prepare(model_config, config_hash=None, key=None, digest=None, state_dict=None)

    def prepare(
        self,
        model_config: dict[str, Any],
        *,
        config_hash: str | None,
        key: str | None,
        digest: str | None,
        state_dict: dict[str, torch.Tensor] | None,
    ) -> None:
        """Builds the model, loads these weights and proves its log-prob path on them; once.

        The model becomes visible to `score` only when all three succeeded, so a Score never sees a
        half-built model. Later calls check that the config is the one the model was built from.
        Raises ModelRejected when the model cannot be served exactly.
        """
        with self._build_lock:
            if self.model is not None:
                if config_hash is not None and self.model_config_hash not in (None, config_hash):
                    raise ModelRejected(
                        f"model config hash {config_hash[:12]}… differs from the {self.model_config_hash[:12]}… this "
                        "server's model was built from; one service serves one architecture"
                    )
                return
            model = build_model(
                model_config, dtype=self.dtype, device=str(self.device), attn_implementation=self.attn_implementation
            )
            if state_dict is not None:
                _load_into(model, state_dict)
            try:
                probe = choose_path(model, dtype=self.dtype, chunk_tokens=self.logprob_chunk_tokens, device=self.device)
            except ValueError as e:
                raise ModelRejected(f"{type(model).__name__}: {e}") from None
            except Exception as e:  # the architecture's own forward does not run here
                raise ModelRejected(f"{type(model).__name__}'s own forward fails on the probe sequence: {e}") from None
            if probe.path is None:
                raise ModelRejected(
                    f"no log-prob path of {type(model).__name__} matches its own forward within "
                    f"{TOLERANCE_NATS[self.dtype]:g} nats on the probe ({probe.describe()}); refusing to serve it"
                )
            tiled, untiled_reason = False, "batch_invariant is off: sequences are batched by length"
            if self.batch_invariant:
                try:
                    untiled_reason = tiles_hold(
                        probe.path, model, dtype=self.dtype, tile_tokens=self.tile_tokens, max_rows=self.tile_rows,
                        device=self.device,
                    )
                except Exception as e:  # its forward refuses the tile's shape: serve each sequence alone
                    untiled_reason = f"the tile probe fails: {type(e).__name__}: {str(e)[:120]}"
                tiled = untiled_reason is None
            log.info(
                "built %s (%s, attention %s, %d parameters); log-prob path %r, probe |error| vs own forward: %s; %s",
                type(model).__name__,
                self.dtype,
                model.config._attn_implementation,
                sum(p.numel() for p in model.parameters()),
                probe.name,
                probe.describe(),
                "sequences share fixed-shape tiles" if tiled else f"no shared tiles ({untiled_reason})",
            )
            self.tiled, self.untiled_reason = tiled, untiled_reason
            if tiled and self.shrink_partial_tiles:
                self.row_checks = RowCountChecks(probe.path, vocab_size=int(model.config.vocab_size), device=self.device)
            self.path, self.probe, self.model_config_hash = probe.path, probe, config_hash
            if state_dict is not None:
                self.resident_key, self.resident_digest = key, digest
            self.model = model

    def load(self, key: str, digest: str, state_dict: dict[str, torch.Tensor]) -> None:
        """Makes these weights resident (copied into the model's own storage, cast to its dtype)."""
        assert self.model is not None, "ensure_model first"
        if self.resident_key == key and self.resident_digest == digest:
            return
        self.resident_key = self.resident_digest = None  # a failed copy must not leave a stale label
        started = time.perf_counter()
        _load_into(self.model, state_dict)
        self.swaps += 1
        self.swap_seconds += time.perf_counter() - started
        self.resident_key, self.resident_digest = key, digest

    def _micro_batches(self, order: list[int], items: list[ScoreItem]) -> list[list[int]]:
        """Longest first; a batch's padded size (count × longest) stays within max_batch_tokens.

        Batch-invariant mode without tiles (a model the tile probe refused, or a path that runs the
        model's own forward) forwards each sequence on its own: a batch of varying shape changes the
        reduction order of kernels, which moves fp32 results by ~1e-7. Alone, an answer never depends
        on what else was in the request.
        """
        alone = self.batch_invariant or getattr(self.path, "one_sequence_per_forward", False)
        batches: list[list[int]] = []
        current: list[int] = []
        for idx in order:
            length = len(items[idx].token_ids)
            longest = len(items[current[0]].token_ids) if current else length
            full = (len(current) + 1) * longest > self.max_batch_tokens
            if current and (full or alone):
                batches.append(current)
                current = []
            current.append(idx)
        if current:
            batches.append(current)
        return batches

    @torch.inference_mode()
    def score(self, items: list[ScoreItem], *, temperature: float = 1.0, should_stop=None) -> list[np.ndarray]:
        """float32 log-probs per item, aligned with item.positions, all finite (else NonFiniteLogprobs).
        `should_stop()` is polled between micro-batches and between layers, so a cancelled request
        stops using the model mid-forward."""
        assert self.model is not None and self.path is not None
        if self.tiled:
            return self._score_tiles(items, temperature, should_stop)
        results: list[np.ndarray] = [np.empty(0, np.float32)] * len(items)
        order = sorted(range(len(items)), key=lambda i: -len(items[i].token_ids))
        # The layer hooks go in once per call: batch-invariant mode forwards every sequence on its own,
        # and an MoE model has a hook per expert.
        with stop_between_layers(self.model, should_stop):
            for batch in self._micro_batches(order, items):
                if should_stop is not None and should_stop():
                    raise Stopped()
                longest = len(items[batch[0]].token_ids)
                ids = torch.zeros(len(batch), longest, dtype=torch.long, device="cpu")
                mask = torch.zeros(len(batch), longest, dtype=torch.long, device="cpu")
                rows, cols, targets = [], [], []
                for b, idx in enumerate(batch):
                    item = items[idx]
                    ids[b, : len(item.token_ids)] = torch.from_numpy(item.token_ids)
                    mask[b, : len(item.token_ids)] = 1
                    rows.append(np.full(len(item.positions), b))
                    cols.append(item.positions - 1)  # the state at t−1 predicts token t
                    targets.append(item.token_ids[item.positions])
                logprobs = self.path.logprobs(
                    ids.to(self.device),
                    mask.to(self.device),
                    torch.from_numpy(np.concatenate(rows)).to(self.device),
                    torch.from_numpy(np.concatenate(cols)).to(self.device),
                    torch.from_numpy(np.concatenate(targets)).to(self.device),
                    temperature,
                ).cpu().numpy()
                self._check_finite(logprobs, temperature)
                offset = 0
                for idx in batch:
                    n = len(items[idx].positions)
                    results[idx] = logprobs[offset : offset + n]
                    offset += n
        return results


    def _score_tiles(self, items: list[ScoreItem], temperature: float, should_stop) -> list[np.ndarray]:
        """Every item in a tile of its bucket's fixed shape, whatever else is being scored (tiles.py)."""
        results: list[np.ndarray] = [np.empty(0, np.float32)] * len(items)
        tiles = plan_tiles([len(it.token_ids) for it in items], tile_tokens=self.tile_tokens, max_rows=self.tile_rows)
        with stop_between_layers(self.model, should_stop):
            for tile in tiles:
                if should_stop is not None and should_stop():
                    raise Stopped()
                ids = torch.zeros(self._rows_of(tile), tile.length, dtype=torch.long, device="cpu")  # dummy rows stay token 0
                self.tile_rows_forwarded += ids.shape[0]
                self.tile_rows_used += len(tile.members)
                rows = []
                for b, idx in enumerate(tile.members):
                    item = items[idx]
                    ids[b, : len(item.token_ids)] = torch.from_numpy(item.token_ids)
                    cols = torch.from_numpy(item.positions - 1).to(self.device)  # the state at t−1 predicts token t
                    rows.append((b, cols, torch.from_numpy(item.token_ids[item.positions]).to(self.device)))
                answers = self.path.tile_logprobs(ids.to(self.device), rows, temperature)
                for idx, answer in zip(tile.members, answers):
                    results[idx] = answer.cpu().numpy()
                    self._check_finite(results[idx], temperature)
        return results

    def room_for_company(self, lengths: list[int]) -> bool:
        """Whether sequences of these lengths leave room in their forwards for another caller's: free
        rows in their tiles, or any batch shape when forwards need not be batch-invariant. Sequences
        that go alone (the probe found rows interacting) share nothing."""
        if not self.batch_invariant:
            return not getattr(self.path, "one_sequence_per_forward", False)
        return self.tiled and tiles_have_room(lengths, tile_tokens=self.tile_tokens, max_rows=self.tile_rows)

    def _rows_of(self, tile) -> int:
        """The tile's fixed rows, or fewer where that row count was shown to give the same bits."""
        rows = fewest_rows(len(tile.members), tile.rows)
        if rows < tile.rows and self.row_checks is not None and self.row_checks.holds(tile.length, rows, tile.rows):
            return rows
        return tile.rows

    def _check_finite(self, logprobs: np.ndarray, temperature: float) -> None:
        if not np.isfinite(logprobs).all():
            # Never hand out a NaN or -inf as an exact number: the loss would silently break.
            bad = int((~np.isfinite(logprobs)).sum())
            raise NonFiniteLogprobs(
                f"the forward under weights {self.resident_key} gave {bad} non-finite log-probs of "
                f"{len(logprobs)} at temperature {temperature:g} (weights or activations overflowed {self.dtype})"
            )


def _load_into(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ModelRejected(f"the snapshot's weights do not fit {type(model).__name__}: {str(e)[:2000]}") from None
    tied = {k for k in missing if k.endswith("lm_head.weight") and getattr(model.config, "tie_word_embeddings", False)}
    if set(missing) - tied or unexpected:
        raise ModelRejected(
            f"the snapshot's weights do not fit {type(model).__name__}: missing {sorted(set(missing) - tied)[:20]}, "
            f"unexpected {sorted(unexpected)[:20]}"
        )

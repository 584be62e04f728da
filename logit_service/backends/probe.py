"""Proves, per model, that the log-prob path the backend will serve equals the model's own forward.

At build time a fixed probe sequence goes through each candidate path (cheapest first, `paths.py`) and
through the model's own full forward, `log_softmax(model(ids).logits.float())`; the first path that
agrees within the tolerance serves. None agreeing means the model cannot be served exactly: refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from logit_service.backends.paths import candidate_paths
from logit_service.backends.tiles import bucket_length, rows_per_tile

log = logging.getLogger(__name__)

PROBE_LENGTH = 48
"""Long enough to cross the tiny sliding windows tests use, short enough to cost nothing at build."""

TOLERANCE_NATS = {"float32": 1e-4, "bfloat16": 1e-4}
"""Largest |lean − own forward| accepted on the probe, per forward dtype.

Every path runs the same base model and the same head ops in the same dtype as the own forward, and
normalises in float32, so they differ only by float32 rounding of the normaliser and of matmuls with a
different row count: ~1e-6 nats observed (fp32 and bf16, CPU). A skipped post-head transform moves
log-probs by 1e-2 to several nats (Gemma's cap, Cohere's and Granite's scales), two orders of magnitude
or more above this bound; a bound tighter than ~1e-5 would start refusing on rounding alone.
"""


@dataclass(frozen=True)
class ProbeResult:
    path: object  # the chosen path (paths.py), None if refused
    errors: dict[str, float | str]  # path name → max |error| on the probe, or why it failed

    @property
    def name(self) -> str:
        return "refused" if self.path is None else self.path.name

    def describe(self) -> str:
        return ", ".join(f"{k}: {v:.2e}" if isinstance(v, float) else f"{k}: {v}" for k, v in self.errors.items())


def probe_tokens(vocab_size: int, length: int = PROBE_LENGTH) -> torch.Tensor:
    """A fixed sequence (the same for every build of a model), spread over the whole vocabulary."""
    generator = torch.Generator().manual_seed(20240601)
    return torch.randint(0, vocab_size, (1, length), generator=generator, device="cpu")


@torch.inference_mode()
def own_forward_logprobs(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """What a trainer computes: full logits, float32 log-softmax, gather of the next token → [T−1]."""
    logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
    return torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None]).squeeze(1)


@torch.inference_mode()
def choose_path(model: torch.nn.Module, *, dtype: str, chunk_tokens: int, device: torch.device) -> ProbeResult:
    """The cheapest path whose probe log-probs match the model's own forward; path None if none does.

    Raises ValueError when the model's own forward cannot run or is not finite on the probe.
    """
    ids = probe_tokens(int(model.config.vocab_size)).to(device)
    expected = own_forward_logprobs(model, ids)
    if not torch.isfinite(expected).all():
        raise ValueError("the model's own forward gives non-finite log-probs on the probe sequence")
    tolerance = TOLERANCE_NATS[dtype]
    length = ids.shape[1]
    mask = torch.ones_like(ids)
    rows = torch.zeros(length - 1, dtype=torch.long, device=device)
    cols = torch.arange(length - 1, device=device)
    targets = ids[0, 1:]
    errors: dict[str, float | str] = {}
    # A chunk smaller than the probe, so the chunking itself is part of what is proved.
    chunk = max(1, min(chunk_tokens, (length - 1) // 3))
    for path in candidate_paths(model, chunk):
        try:
            got = path.logprobs(ids, mask, rows, cols, targets, 1.0)
        except Exception as e:  # a path this architecture's modules do not support: try the next
            errors[path.name] = f"{type(e).__name__}: {str(e)[:120]}"
            continue
        error = float((got - expected).abs().max()) if torch.isfinite(got).all() else float("inf")
        errors[path.name] = error
        if error <= tolerance:
            path.chunk_tokens = chunk_tokens
            return ProbeResult(path, errors)
    return ProbeResult(None, errors)


TILE_PROBE_LENGTH = 41
"""Not a multiple of 16, so the probe sequence is padded inside its tile."""


@torch.inference_mode()
def tiles_hold(path, model: torch.nn.Module, *, dtype: str, tile_tokens: int, max_rows: int, device: torch.device) -> str | None:
    """None when this model's answers in fixed-shape tiles (tiles.py) match its own forward and do not
    depend on the other rows; otherwise why not (the backend then forwards each sequence alone).

    The probe sequence goes through two tiles of its bucket's shape: beside dummy rows, and in the last
    row beside random full-length neighbours. An architecture whose rows interact (mixture-of-experts
    routing groups tokens of every row into one matmul per expert) or whose real positions see the
    padding fails here.
    """
    if not hasattr(path, "tile_logprobs"):
        return f"the {path.name} path runs the model's own forward one sequence at a time"
    vocab = int(model.config.vocab_size)
    ids = probe_tokens(vocab)[:, :TILE_PROBE_LENGTH].to(device)
    n = ids.shape[1]
    expected = own_forward_logprobs(model, ids)
    bucket = bucket_length(n)
    rows = max(2, rows_per_tile(bucket, tile_tokens=tile_tokens, max_rows=max_rows))
    generator = torch.Generator().manual_seed(7)
    cols, targets = torch.arange(n - 1, device=device), ids[0, 1:]

    def in_tile(row: int, tile: torch.Tensor) -> torch.Tensor:
        tile[row] = 0
        tile[row, :n] = ids[0]
        return path.tile_logprobs(tile.to(device), [(row, cols, targets)], 1.0)[0]

    beside_dummies = in_tile(0, torch.zeros(rows, bucket, dtype=torch.long, device="cpu"))
    beside_others = in_tile(rows - 1, torch.randint(0, vocab, (rows, bucket), generator=generator, device="cpu"))
    if not torch.equal(beside_dummies, beside_others):
        difference = float((beside_dummies - beside_others).abs().max())
        return f"a row's answer depends on the other rows of its tile (max |difference| {difference:.2e})"
    error = float((beside_dummies - expected).abs().max())
    if not error <= TOLERANCE_NATS[dtype]:
        return f"answers in a padded tile differ from the model's own forward by {error:.2e} nats"
    return None

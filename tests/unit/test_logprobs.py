"""Chunked float32 log-probs against the direct log-softmax, and TorchBackend against the reference forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from logit_service.backends.logprobs import gather_logprobs
from logit_service.backends.tiles import bucket_length, rows_per_tile
from logit_service.backends.torch_backend import ScoreItem, TorchBackend
from logit_service.demo.tiny_model import build_tiny_model, reference_logprobs
from logit_service.errors import ModelRejected

VOCAB = 512
HIDDEN = 32
ROWS = 50


class RecordingHead(nn.Module):
    """Wraps an lm_head and keeps what each call saw and returned."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head
        self.input_rows: list[int] = []
        self.outputs: list[torch.Tensor] = []

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        self.input_rows.append(hidden.shape[0])
        logits = self.head(hidden)
        self.outputs.append(logits.detach().clone())
        return logits


def _head_and_inputs(dtype: torch.dtype, scale: float = 1.0, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    head = nn.Linear(HIDDEN, VOCAB, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(VOCAB, HIDDEN, generator=generator) * scale / HIDDEN**0.5)
    head = head.to(dtype)
    hidden = torch.randn(ROWS, HIDDEN, generator=generator).to(dtype)
    targets = torch.randint(0, VOCAB, (ROWS,), generator=generator)
    return head, hidden, targets


@pytest.mark.parametrize("chunk_tokens", [1, 7, 1024], ids=lambda c: f"chunk={c}")
@pytest.mark.parametrize("temperature", [1.0, 0.7], ids=lambda t: f"T={t}")
def test_gather_logprobs_matches_the_full_log_softmax(chunk_tokens, temperature):
    # Logits ~ N(0, 1): log-probs near −log V ≈ −6, where float32 rounding is ~5e-7.
    head, hidden, targets = _head_and_inputs(torch.float32)

    with torch.no_grad():
        logprobs = gather_logprobs(hidden, targets, head, temperature=temperature, chunk_tokens=chunk_tokens)
        expected = torch.log_softmax(head(hidden).float() / temperature, dim=-1).gather(1, targets[:, None]).squeeze(1)

    assert logprobs.dtype == torch.float32
    assert logprobs.shape == (ROWS,)
    torch.testing.assert_close(logprobs, expected, rtol=0, atol=1e-6)


def test_log_probs_are_float32_whatever_the_process_default_dtype():
    # A trainer may run the backend in its own process after torch.set_default_dtype(torch.float64);
    # the answers must still be the float32 values the service sends, not a silently wider array.
    head, hidden, targets = _head_and_inputs(torch.float32)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.no_grad():
            logprobs = gather_logprobs(hidden, targets, head)
    finally:
        torch.set_default_dtype(previous)
    assert logprobs.dtype == torch.float32


def test_temperature_changes_the_answer():
    head, hidden, targets = _head_and_inputs(torch.float32, scale=4.0)

    with torch.no_grad():
        cold = gather_logprobs(hidden, targets, head, temperature=0.7)
        warm = gather_logprobs(hidden, targets, head, temperature=1.0)

    assert (cold - warm).abs().max() > 1e-2


def test_softcapping_is_applied_before_the_temperature():
    head, hidden, targets = _head_and_inputs(torch.float32, scale=4.0)
    cap, temperature = 2.0, 0.7

    with torch.no_grad():
        logprobs = gather_logprobs(hidden, targets, head, temperature=temperature, final_logit_softcapping=cap)
        capped = torch.tanh(head(hidden) / cap) * cap
        expected = torch.log_softmax(capped / temperature, dim=-1).gather(1, targets[:, None]).squeeze(1)

    torch.testing.assert_close(logprobs, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("chunk_tokens", [1, 7, 1024], ids=lambda c: f"chunk={c}")
def test_bf16_head_gets_a_float32_normaliser(chunk_tokens):
    # Logits of a few nats, as in a trained LM: large enough for bf16 rounding of log-probs to show.
    linear, hidden, targets = _head_and_inputs(torch.bfloat16, scale=6.0)
    head = RecordingHead(linear)

    with torch.no_grad():
        logprobs = gather_logprobs(hidden, targets, head, chunk_tokens=chunk_tokens)

    # The reference normalises the very bf16 logits the head produced, in float64.
    logits = torch.cat(head.outputs)
    assert logits.dtype == torch.bfloat16
    picked = targets[:, None]
    exact = torch.log_softmax(logits.double(), dim=-1).gather(1, picked).squeeze(1)
    bf16_normaliser = torch.log_softmax(logits, dim=-1).gather(1, picked).squeeze(1).double()
    fp32_error = (logprobs.double() - exact).abs().max().item()
    bf16_error = (bf16_normaliser - exact).abs().max().item()

    assert logprobs.dtype == torch.float32
    assert fp32_error <= 1e-5
    assert bf16_error > 1e-3
    assert fp32_error * 100 < bf16_error


@pytest.mark.parametrize("chunk_tokens", [1, 7, 16, 1024], ids=lambda c: f"chunk={c}")
def test_lm_head_never_sees_more_than_a_chunk_of_rows(chunk_tokens):
    linear, hidden, targets = _head_and_inputs(torch.float32)
    head = RecordingHead(linear)

    with torch.no_grad():
        gather_logprobs(hidden, targets, head, chunk_tokens=chunk_tokens)

    assert max(head.input_rows) <= chunk_tokens
    assert sum(head.input_rows) == ROWS
    assert len(head.input_rows) == -(-ROWS // chunk_tokens)


# --- TorchBackend -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_tiny_model(seed=0, vocab_size=VOCAB, hidden_size=HIDDEN, layers=2)


def _backend(model: torch.nn.Module, **kwargs) -> TorchBackend:
    backend = TorchBackend(**kwargs)
    backend.ensure_model(model.config.to_dict())
    backend.load("0", "digest-0", model.state_dict())
    return backend


def _sequences(lengths, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, VOCAB, size=n).astype(np.int64) for n in lengths]


def _all_positions(token_ids: np.ndarray) -> ScoreItem:
    return ScoreItem(token_ids=token_ids, positions=np.arange(1, len(token_ids), dtype=np.int64))


LENGTHS = [2, 9, 31, 31, 64]


@pytest.mark.parametrize("temperature", [1.0, 0.5], ids=lambda t: f"T={t}")
def test_backend_matches_the_reference_forward(model, temperature):
    backend = _backend(model)
    sequences = _sequences(LENGTHS)

    answers = backend.score([_all_positions(s) for s in sequences], temperature=temperature)

    for token_ids, answer in zip(sequences, answers):
        expected = reference_logprobs(model, token_ids, temperature).numpy()[1:]
        assert answer.dtype == np.float32
        np.testing.assert_allclose(answer, expected, rtol=0, atol=1e-5, err_msg=f"length {len(token_ids)}")


def test_backend_scores_only_the_requested_positions(model):
    backend = _backend(model)
    (token_ids,) = _sequences([40], seed=1)
    positions = np.array([1, 5, 6, 39], dtype=np.int64)

    (answer,) = backend.score([ScoreItem(token_ids=token_ids, positions=positions)])

    expected = reference_logprobs(model, token_ids).numpy()[positions]
    np.testing.assert_allclose(answer, expected, rtol=0, atol=1e-5)


def _forward_input_shapes(backend: TorchBackend) -> list[tuple[int, int]]:
    shapes: list[tuple[int, int]] = []
    backend.model.base_model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    return shapes


@pytest.mark.parametrize(
    "lengths",
    [
        pytest.param([2, 9, 31, 64], id="different lengths"),
        pytest.param([31, 31, 31, 31], id="equal lengths"),
        pytest.param([9, 31, 9, 64, 31], id="mixed"),
    ],
)
def test_answers_do_not_depend_on_what_they_are_batched_with(model, lengths):
    backend = _backend(model)  # batch_invariant is the default
    assert backend.tiled, backend.untiled_reason
    items = [_all_positions(s) for s in _sequences(lengths, seed=2)]
    shapes = _forward_input_shapes(backend)
    order = np.random.default_rng(0).permutation(len(items))

    batched = backend.score(items)
    shuffled = backend.score([items[i] for i in order])
    seen_batched = list(shapes)
    alone = [backend.score([item])[0] for item in items]

    # Every forward has its bucket's fixed shape, or fewer rows only where the row-count check showed
    # that shape gives every row the full tile's bits, so a sequence alone gets what it got beside others.
    full_rows = {bucket_length(n): rows_per_tile(bucket_length(n), tile_tokens=backend.tile_tokens, max_rows=backend.tile_rows) for n in lengths}
    assert {(full_rows[b], b) for b in full_rows} <= set(seen_batched)
    for rows, length in shapes:
        assert length in full_rows, (rows, length)
        assert rows == full_rows[length] or backend.row_checks.outcomes[(length, rows)], (rows, length)
    for i, n in enumerate(lengths):
        assert np.array_equal(alone[i], batched[i]), f"sequence {i} (length {n}): alone vs batched"
        j = int(np.flatnonzero(order == i)[0])
        assert np.array_equal(alone[i], shuffled[j]), f"sequence {i} (length {n}): alone vs reordered batch"


@pytest.mark.parametrize(
    ("lengths", "wide_shapes", "narrow_shapes"),
    [
        pytest.param([40] * 5, [(5, 40)], [(2, 40), (2, 40), (1, 40)], id="equal lengths"),
        pytest.param([40, 33, 20, 12, 5], [(5, 40)], [(2, 40), (3, 20)], id="mixed lengths, padded"),
    ],
)
def test_max_batch_tokens_splits_batches_without_changing_results(model, lengths, wide_shapes, narrow_shapes):
    # Only the throughput mode batches sequences together, so only there does max_batch_tokens split.
    sequences = _sequences(lengths, seed=3)
    items = [_all_positions(s) for s in sequences]
    wide = _backend(model, batch_invariant=False, max_batch_tokens=16384)
    narrow = _backend(model, batch_invariant=False, max_batch_tokens=80)
    wide_seen, narrow_seen = _forward_input_shapes(wide), _forward_input_shapes(narrow)

    wide_answers = wide.score(items)
    narrow_answers = narrow.score(items)

    assert (wide_seen, narrow_seen) == (wide_shapes, narrow_shapes)
    for token_ids, a, b in zip(sequences, wide_answers, narrow_answers):
        # Different row counts round differently (~1e-7), so equal here means within fp32 noise.
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6, err_msg=f"length {len(token_ids)}")
        expected = reference_logprobs(model, token_ids).numpy()[1:]
        np.testing.assert_allclose(b, expected, rtol=0, atol=1e-5, err_msg=f"length {len(token_ids)}")


def test_a_sequence_longer_than_max_batch_tokens_is_still_scored(model):
    backend = _backend(model, batch_invariant=False, max_batch_tokens=64)
    items = [_all_positions(s) for s in _sequences([100, 30], seed=5)]
    shapes = _forward_input_shapes(backend)

    answers = backend.score(items)

    assert shapes == [(1, 100), (1, 30)]
    for item, answer in zip(items, answers):
        expected = reference_logprobs(model, item.token_ids).numpy()[1:]
        np.testing.assert_allclose(answer, expected, rtol=0, atol=1e-5)


def test_load_of_a_state_dict_missing_a_key_fails_and_clears_the_resident_label(model):
    backend = _backend(model)
    assert (backend.resident_key, backend.resident_digest) == ("0", "digest-0")
    incomplete = dict(model.state_dict())
    del incomplete["model.norm.weight"]

    with pytest.raises(ModelRejected, match="model.norm.weight"):
        backend.load("1", "digest-1", incomplete)

    assert backend.resident_key is None
    assert backend.resident_digest is None


def test_load_of_an_unexpected_key_fails(model):
    backend = _backend(model)
    extra = {**model.state_dict(), "model.extra.weight": torch.zeros(3)}

    with pytest.raises(ModelRejected, match="model.extra.weight"):
        backend.load("1", "digest-1", extra)

    assert backend.resident_key is None


def test_load_makes_other_weights_resident(model):
    other = build_tiny_model(seed=7, vocab_size=VOCAB, hidden_size=HIDDEN, layers=2)
    backend = _backend(model)
    (token_ids,) = _sequences([20], seed=4)

    backend.load("7", "digest-7", other.state_dict())
    (answer,) = backend.score([_all_positions(token_ids)])

    assert (backend.resident_key, backend.resident_digest) == ("7", "digest-7")
    np.testing.assert_allclose(answer, reference_logprobs(other, token_ids).numpy()[1:], rtol=0, atol=1e-5)

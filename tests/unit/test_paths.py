"""Each log-prob path, called directly, equals the model's own forward at the positions asked for."""

from __future__ import annotations

import pytest
import torch

from logit_service.backends.paths import LeanPath, LogitsToKeepPath, SlicedHeadPath, candidate_paths
from tests.tiny_architectures import build_trained, causal_lm_architectures, tiny_architecture

NAMES = dict(causal_lm_architectures())
TEMPERATURE = 0.7
LENGTHS = (13, 9)  # a batch of two, the second right-padded


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_trained(tiny_architecture("llama", NAMES["llama"]))


@torch.inference_mode()
def _own_forward(model, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """log-probs [T-1] of one unpadded sequence [T], from the model's full logits."""
    logits = model(input_ids=ids[None], use_cache=False).logits[0, :-1].float() / temperature
    return torch.log_softmax(logits, dim=-1).gather(1, ids[1:, None]).squeeze(1)


@torch.inference_mode()
def _batch(model):
    generator = torch.Generator().manual_seed(3)
    sequences = [torch.randint(0, model.config.vocab_size, (n,), generator=generator) for n in LENGTHS]
    ids = torch.zeros(len(sequences), max(LENGTHS), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, seq in enumerate(sequences):
        ids[b, : len(seq)], mask[b, : len(seq)] = seq, 1
    # Positions scored: not all of them, not in one block, and more per row than one chunk holds.
    picked = [[0, 2, 3, 5, 7, 8, 11], [1, 2, 4, 6, 7]]
    rows = torch.tensor([b for b, cols in enumerate(picked) for _ in cols])
    cols = torch.tensor([c for cols in picked for c in cols])
    targets = ids[rows, cols + 1]
    expected = torch.cat([_own_forward(model, seq, TEMPERATURE)[torch.tensor(c)] for seq, c in zip(sequences, picked)])
    return ids, mask, rows, cols, targets, expected


@pytest.mark.parametrize("path_class", [LeanPath, LogitsToKeepPath, SlicedHeadPath], ids=lambda c: c.name)
@torch.inference_mode()
def test_each_path_answers_the_positions_asked_for_as_the_own_forward_does(model, path_class):
    ids, mask, rows, cols, targets, expected = _batch(model)
    path = path_class(model, chunk_tokens=3)
    got = path.logprobs(ids, mask, rows, cols, targets, TEMPERATURE)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert float((got - expected).abs().max()) <= 1e-5


@torch.inference_mode()
def test_the_fallbacks_never_forward_more_positions_than_a_chunk(model):
    ids, mask, rows, cols, targets, _ = _batch(model)
    widths: list[int] = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, i, out: widths.append(out.shape[-2]))
    try:
        for path_class in (LogitsToKeepPath, SlicedHeadPath):
            widths.clear()
            path_class(model, chunk_tokens=3).logprobs(ids, mask, rows, cols, targets, 1.0)
            assert widths == [3, 3, 1, 3, 2], path_class.name  # row 0: 7 positions, row 1: 5
    finally:
        handle.remove()


@torch.inference_mode()
def test_a_tile_answers_each_row_as_its_sequence_alone(model):
    generator = torch.Generator().manual_seed(5)
    tile = torch.zeros(3, 16, dtype=torch.long)  # no mask in a tile: each row's tail is padding it never sees
    sequences = [torch.randint(0, model.config.vocab_size, (n,), generator=generator) for n in (16, 11)]
    for b, seq in zip((0, 2), sequences):
        tile[b, : len(seq)] = seq
    rows = [(b, torch.arange(len(seq) - 1), seq[1:]) for b, seq in zip((0, 2), sequences)]
    path = LeanPath(model, chunk_tokens=4)
    assert path.tile_hidden(tile).shape == (3, 16, model.config.hidden_size)
    got = path.tile_logprobs(tile, rows, TEMPERATURE)
    assert len(got) == 2
    for answer, seq in zip(got, sequences):
        assert float((answer - _own_forward(model, seq, TEMPERATURE)).abs().max()) <= 1e-5


def test_the_candidates_come_cheapest_first_and_only_where_the_model_allows(model):
    paths = candidate_paths(model, chunk_tokens=5)
    assert [p.name for p in paths] == ["lean", "logits_to_keep", "sliced_head"]
    assert [p.one_sequence_per_forward for p in paths] == [False, True, True]
    assert all(p.chunk_tokens == 5 for p in paths)


def test_a_forward_without_logits_to_keep_is_not_offered_it(model):
    class NoLogitsToKeep(torch.nn.Module):
        """The model's own forward behind a signature that does not take `logits_to_keep`."""

        def __init__(self, inner) -> None:
            super().__init__()
            self.inner, self.config, self.base_model = inner, inner.config, inner.base_model

        def get_output_embeddings(self):
            return self.inner.get_output_embeddings()

        def forward(self, input_ids, attention_mask=None, use_cache=False):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)

    wrapped = NoLogitsToKeep(model)
    assert not LogitsToKeepPath.available(wrapped) and LogitsToKeepPath.available(model)
    assert [p.name for p in candidate_paths(wrapped, chunk_tokens=5)] == ["lean", "sliced_head"]
    ids, mask, rows, cols, targets, expected = _batch(model)
    with torch.inference_mode():
        got = SlicedHeadPath(wrapped, chunk_tokens=4).logprobs(ids, mask, rows, cols, targets, TEMPERATURE)
    assert float((got - expected).abs().max()) <= 1e-5


def test_a_model_without_output_embeddings_gets_no_head_paths(model):
    class Headless(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def get_output_embeddings(self):
            return None

        def forward(self, input_ids, attention_mask=None, use_cache=False, logits_to_keep=0):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache, logits_to_keep=logits_to_keep)

    headless = Headless(model)
    assert not SlicedHeadPath.available(headless)
    assert [p.name for p in candidate_paths(headless, chunk_tokens=5)] == ["logits_to_keep"]


def test_every_candidate_offered_serves_the_model_it_was_offered_for(model):
    ids, mask, rows, cols, targets, expected = _batch(model)
    with torch.inference_mode():
        for path in candidate_paths(model, chunk_tokens=4):
            got = path.logprobs(ids, mask, rows, cols, targets, TEMPERATURE)
            assert float((got - expected).abs().max()) <= 1e-5, path.name


class _Calls:
    """The keyword arguments of every call of a module's forward, recorded by a pre-hook."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.kwargs: list[dict] = []
        self._handle = module.register_forward_pre_hook(lambda m, args, kwargs: self.kwargs.append(kwargs), with_kwargs=True)

    def __enter__(self) -> "_Calls":
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


@pytest.mark.parametrize("path_class", [LeanPath, LogitsToKeepPath, SlicedHeadPath], ids=lambda c: c.name)
@torch.inference_mode()
def test_forwards_get_the_rows_mask_and_build_no_kv_cache(model, path_class):
    ids, mask, rows, cols, targets, _ = _batch(model)
    path = path_class(model, chunk_tokens=3)
    with _Calls(model.base_model if path_class is LeanPath else model) as calls:
        path.logprobs(ids, mask, rows, cols, targets, 1.0)
    assert calls.kwargs and all(kw["use_cache"] is False for kw in calls.kwargs)
    if path_class is LeanPath:  # the whole batch in one forward, with its padding mask
        (kw,) = calls.kwargs
        assert kw["input_ids"] is ids and torch.equal(kw["attention_mask"], mask)
        return
    # One sequence per forward, cut to its own length (no padding left to mask), once per chunk.
    shapes = [(tuple(kw["input_ids"].shape), tuple(kw["attention_mask"].shape)) for kw in calls.kwargs]
    assert shapes == [((1, 13), (1, 13))] * 3 + [((1, 9), (1, 9))] * 2
    assert all(bool(kw["attention_mask"].all()) for kw in calls.kwargs)
    assert torch.equal(calls.kwargs[-1]["input_ids"][0], ids[1, :9])


@torch.inference_mode()
def test_a_tile_forward_builds_no_kv_cache(model):
    with _Calls(model.base_model) as calls:
        LeanPath(model, chunk_tokens=4).tile_hidden(torch.zeros(2, 16, dtype=torch.long))
    assert [kw["use_cache"] for kw in calls.kwargs] == [False]


@torch.inference_mode()
def test_the_lean_head_runs_a_chunk_of_rows_at_a_time(model):
    ids, mask, rows, cols, targets, _ = _batch(model)
    widths: list[int] = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, i, out: widths.append(out.shape[0]))
    try:
        path = LeanPath(model, chunk_tokens=5)
        path.logprobs(ids, mask, rows, cols, targets, 1.0)
        assert widths == [5, 5, 2]  # 12 positions
        widths.clear()
        tile = torch.zeros(2, 16, dtype=torch.long)
        path.tile_logprobs(tile, [(0, torch.arange(12), tile[0, 1:13]), (1, torch.arange(7), tile[1, 1:8])], 1.0)
        assert widths == [5, 5, 2, 5, 2]  # each row's states alone
    finally:
        handle.remove()


@pytest.mark.parametrize("path_class", [LeanPath, LogitsToKeepPath, SlicedHeadPath], ids=lambda c: c.name)
def test_answers_stay_float32_whatever_the_processs_default_dtype(model, path_class):
    # A trainer process may have changed torch's default dtype (float64 for numerics, bfloat16 to build models).
    ids, mask, rows, cols, targets, expected = _batch(model)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.inference_mode():
            got = path_class(model, chunk_tokens=3).logprobs(ids, mask, rows, cols, targets, TEMPERATURE)
    finally:
        torch.set_default_dtype(before)
    assert got.dtype == torch.float32
    assert float((got - expected).abs().max()) <= 1e-5


@pytest.mark.parametrize("path_class", [LeanPath, LogitsToKeepPath, SlicedHeadPath], ids=lambda c: c.name)
def test_answers_stay_on_the_inputs_device_whatever_the_processs_default_device(model, path_class):
    # A trainer process may have called torch.set_default_device("cuda"); "meta" stands in for it here.
    ids, mask, rows, cols, targets, expected = _batch(model)
    with torch.inference_mode(), torch.device("meta"):
        got = path_class(model, chunk_tokens=3).logprobs(ids, mask, rows, cols, targets, TEMPERATURE)
    assert got.device == targets.device
    assert float((got - expected).abs().max()) <= 1e-5

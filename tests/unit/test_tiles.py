"""Fixed-shape tiles: a sequence's log-probs are bit-identical alone and beside any neighbours, checked
empirically on tiny fp32 Qwen2 and Llama models built from configs; models whose rows interact go alone;
a partial tile runs with fewer rows only where that row count gives the full tile's bits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from logit_service.backends.tiles import bucket_length, fewest_rows, plan_tiles, rows_per_tile, tiles_have_room
from logit_service.backends.torch_backend import ScoreItem, TorchBackend
from logit_service.demo.tiny_model import reference_logprobs

VOCAB = 256


@pytest.mark.parametrize(
    ("n", "bucket"),
    [(1, 16), (16, 16), (17, 32), (33, 48), (64, 64), (65, 80), (100, 112), (500, 512), (513, 640), (8000, 8192)],
)
def test_buckets_pad_by_at_most_a_quarter_and_stay_multiples_of_16(n, bucket):
    assert bucket_length(n) == bucket
    assert bucket % 16 == 0 and bucket >= n


def test_padding_stays_within_a_quarter_above_64_tokens():
    for n in range(65, 5000):
        assert bucket_length(n) <= 1.25 * n, n


def test_a_tile_has_the_fixed_rows_of_its_bucket_however_many_wait():
    tiles = plan_tiles([40, 40, 40, 300, 41], tile_tokens=128, max_rows=8)
    assert [(t.length, t.rows, t.members) for t in tiles] == [(320, 1, (3,)), (48, 2, (0, 1)), (48, 2, (2, 4))]
    assert rows_per_tile(16, tile_tokens=2048, max_rows=8) == 8
    assert rows_per_tile(4096, tile_tokens=2048, max_rows=8) == 1


@pytest.mark.parametrize(
    ("lengths", "room"),
    [
        pytest.param([40], True, id="one sequence in a 2-row tile"),
        pytest.param([40, 41], False, id="two of one bucket fill its 2-row tile"),
        pytest.param([40, 41, 44], True, id="the second tile has a free row"),
        pytest.param([300], False, id="a 1-row bucket is always full"),
        pytest.param([300, 40, 41], False, id="every tile full"),
        pytest.param([300, 40], True, id="one full tile, one with room"),
        pytest.param([], False, id="nothing planned"),
    ],
)
def test_tiles_have_room_only_where_a_planned_tile_has_a_free_row(lengths, room):
    assert tiles_have_room(lengths, tile_tokens=128, max_rows=8) is room


@pytest.mark.parametrize(
    ("members", "rows", "expected"),
    [
        pytest.param(1, 8, 1, id="lone sequence: one row"),
        pytest.param(2, 8, 2, id="two: two rows"),
        pytest.param(3, 8, 4, id="three: next power of two"),
        pytest.param(5, 8, 8, id="five: the full tile"),
        pytest.param(8, 8, 8, id="full"),
        pytest.param(3, 6, 4, id="below a bucket's 6 rows"),
        pytest.param(5, 6, 6, id="power of two above the bucket's rows: its rows"),
        pytest.param(1, 1, 1, id="one-row bucket"),
    ],
)
def test_a_partial_tile_shrinks_to_the_fewest_power_of_two_rows(members, rows, expected):
    assert fewest_rows(members, rows) == expected


def _model(model_type: str) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    extra = {"num_local_experts": 4, "num_experts_per_tok": 2} if model_type == "mixtral" else {}
    config = AutoConfig.for_model(
        model_type, vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False, **extra,
    )  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def _backend(model: torch.nn.Module, **kwargs) -> TorchBackend:
    backend = TorchBackend(**kwargs)
    backend.prepare(model.config.to_dict(), config_hash=None, key="0", digest="d", state_dict=model.state_dict())
    return backend


def _item(tokens: np.ndarray) -> ScoreItem:
    return ScoreItem(tokens, np.arange(1, len(tokens)))


@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
def test_a_sequence_beside_any_neighbours_equals_it_alone_bit_for_bit(model_type):
    model = _model(model_type)
    backend = _backend(model, tile_tokens=512, tile_rows=4)
    assert backend.tiled, backend.untiled_reason
    rng = np.random.default_rng(0)
    targets = [rng.integers(0, VOCAB, size=n).astype(np.int64) for n in (2, 23, 40, 97, 130)]
    alone = [backend.score([_item(t)])[0] for t in targets]
    mismatches = []
    for trial in range(8):
        # Neighbours of random lengths (some filling their rows, some in the same bucket), the targets at
        # random places among them, so each target lands in other rows beside other sequences.
        neighbours = [rng.integers(0, VOCAB, size=int(rng.integers(2, 160))).astype(np.int64) for _ in range(7)]
        batch = neighbours + targets
        order = rng.permutation(len(batch))
        answers = backend.score([_item(batch[i]) for i in order])
        for k, target_index in enumerate(range(len(neighbours), len(batch))):
            got = answers[int(np.flatnonzero(order == target_index)[0])]
            if not np.array_equal(got, alone[k]):
                mismatches.append((trial, len(targets[k]), float(np.abs(got - alone[k]).max())))
    assert not mismatches, f"answers changed with their neighbours: {mismatches}"
    for t, answer in zip(targets, alone):
        np.testing.assert_allclose(answer, reference_logprobs(model, t).numpy()[1:], rtol=0, atol=1e-5)


def test_a_model_whose_tile_rows_interact_is_served_one_sequence_per_forward():
    """Mixture-of-experts routing gathers the tokens of every row into one matmul per expert, so a
    row's answer would depend on its neighbours: the tile probe refuses, and each sequence goes alone."""
    model = _model("mixtral")
    backend = _backend(model)
    if backend.tiled:
        pytest.skip("on this machine the MoE rows happened not to interact on the probe")
    assert "depends on the other rows" in backend.untiled_reason
    assert not backend.room_for_company([9])  # each sequence goes alone: waiting for company gains nothing
    rng = np.random.default_rng(1)
    sequences = [rng.integers(0, VOCAB, size=n).astype(np.int64) for n in (9, 40, 33)]
    batched = backend.score([_item(s) for s in sequences])
    for s, answer in zip(sequences, batched):
        assert np.array_equal(backend.score([_item(s)])[0], answer)
        np.testing.assert_allclose(answer, reference_logprobs(model, s).numpy()[1:], rtol=0, atol=1e-5)


def test_a_backend_has_room_for_company_where_its_tiles_have_free_rows_or_any_batch_shape_will_do():
    model = _model("qwen2")
    tiled = _backend(model, tile_tokens=128, tile_rows=8)
    assert tiled.tiled, tiled.untiled_reason
    assert tiled.room_for_company([40]) and not tiled.room_for_company([40, 41])
    assert _backend(model, batch_invariant=False).room_for_company([40, 41])


def _forward_rows(backend: TorchBackend) -> list[tuple[int, int]]:
    """(rows, columns) of every base-model forward of the backend from now on."""
    shapes: list[tuple[int, int]] = []
    backend.model.base_model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    return shapes


LENGTHS = (5, 23, 40, 97, 130, 250)  # buckets 16, 32, 48, 112, 160, 256: 8, 8, 8, 4, 3 and 2 rows of 512 tokens


def test_a_lone_sequence_in_a_shrunk_tile_gets_the_full_tiles_bits():
    model = _model("qwen2")
    shrinking = _backend(model, tile_tokens=512, tile_rows=8, shrink_partial_tiles=True)
    fixed = _backend(model, tile_tokens=512, tile_rows=8, shrink_partial_tiles=False)
    assert shrinking.tiled and fixed.tiled and fixed.row_checks is None
    rng = np.random.default_rng(3)
    sequences = [rng.integers(0, VOCAB, size=n).astype(np.int64) for n in LENGTHS]
    shapes = _forward_rows(shrinking)
    for tokens in sequences:
        bucket = bucket_length(len(tokens))
        full = rows_per_tile(bucket, tile_tokens=512, max_rows=8)
        alone, in_full_tile = shrinking.score([_item(tokens)])[0], fixed.score([_item(tokens)])[0]
        assert alone.tobytes() == in_full_tile.tobytes(), f"length {len(tokens)}: shrunk tile != full tile"
        # This CPU's kernels give a row the same bits whatever the row count (the check says so per
        # shape); where the check refused, the full tile was used.
        expected_rows = 1 if shrinking.row_checks.outcomes.get((bucket, 1), full == 1) else full
        assert shapes[-1] == (expected_rows, bucket)
    checked = shrinking.row_checks.outcomes
    assert set(checked) == {(bucket_length(n), 1) for n in LENGTHS if rows_per_tile(bucket_length(n), tile_tokens=512, max_rows=8) > 1}
    # Partial tiles of 2 and 3 sequences (2 and 4 rows) beside the lone ones: still the same bits.
    for count in (2, 3):
        together = shrinking.score([_item(t[:40]) for t in sequences[-count:]])
        apart = [fixed.score([_item(t[:40])])[0] for t in sequences[-count:]]
        assert [a.tobytes() for a in together] == [a.tobytes() for a in apart]


def test_a_row_count_that_changes_the_bits_keeps_the_full_tile():
    """A forward whose numbers move with the row count (as kernels chosen by shape can on accelerators):
    the check sees it, and partial tiles keep their full rows, so answers never depend on company."""
    model = _model("qwen2")
    backend = _backend(model, tile_tokens=512, tile_rows=8, shrink_partial_tiles=True)
    fixed = _backend(model, tile_tokens=512, tile_rows=8, shrink_partial_tiles=False)
    for b in (backend, fixed):  # a term that grows with the tile's rows, far below the answers' scale
        b.model.base_model.norm.register_forward_hook(lambda module, args, out: out * (1 + 1e-6 * out.shape[0]))
    shapes = _forward_rows(backend)
    tokens = np.random.default_rng(4).integers(0, VOCAB, size=40).astype(np.int64)
    alone = backend.score([_item(tokens)])[0]
    assert backend.row_checks.outcomes == {(48, 1): False}
    assert shapes[-1] == (8, 48)
    assert alone.tobytes() == fixed.score([_item(tokens)])[0].tobytes()
    beside = backend.score([_item(tokens)] + [_item(tokens[:35])])[0]  # the same bucket: a 2-row partial tile
    assert beside.tobytes() == alone.tobytes()
    assert backend.row_checks.outcomes == {(48, 1): False, (48, 2): False}

"""Splitting a batch into calls and joining the answers: pure, no server."""

from __future__ import annotations

import numpy as np
import pytest

from logit_client.batching import join_results, split_batch
from logit_client.requests import ScoreResult, SequenceInput, SequenceScores
from logit_service.types import SpotCheckReport


def _seq(n: int, name: str) -> SequenceInput:
    return SequenceInput(np.arange(n), spans=((0, 1, n),), sample_id=name)


@pytest.mark.parametrize(
    "lengths, limit, expected",
    [
        pytest.param([10, 10, 10], 25, [["a", "b"], ["c"]], id="fills each call up to the limit"),
        pytest.param([10, 40, 10], 25, [["a"], ["b"], ["c"]], id="a sequence over the limit goes alone"),
        pytest.param([5, 5], 100, [["a", "b"]], id="one call when it fits"),
    ],
)
def test_split_batch_keeps_order_and_the_limit(lengths, limit, expected):
    sequences = [_seq(n, name) for n, name in zip(lengths, "abc")]
    groups = split_batch(sequences, limit)
    assert [[s.sample_id for s in g] for g in groups] == expected


def test_split_batch_rejects_a_nonpositive_limit():
    with pytest.raises(ValueError):
        split_batch([_seq(3, "a")], 0)


def _result(name: str, checked: int, max_err: float, mean_err: float) -> ScoreResult:
    scores = SequenceScores(name, np.zeros(3, np.float32), np.zeros(3, np.uint8), np.full(3, -1))
    return ScoreResult([scores], tokens_scored=2, backend="torch", dtype="float32",
                       spot_check=SpotCheckReport(checked, max_err, mean_err), compute_seconds=0.5)  # fmt: skip


def test_join_results_concatenates_and_weights_the_spot_checks():
    joined = join_results([_result("a", 10, 0.1, 0.02), _result("b", 30, 0.3, 0.06)])
    assert [s.sample_id for s in joined.sequences] == ["a", "b"]
    assert joined.tokens_scored == 4 and joined.compute_seconds == 1.0
    assert joined.spot_check.tokens_checked == 40
    assert joined.spot_check.max_abs_error == 0.3
    assert joined.spot_check.mean_abs_error == pytest.approx((10 * 0.02 + 30 * 0.06) / 40)

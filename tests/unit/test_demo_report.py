"""The demo's closing sentence states what the run's numbers say, including a failed check."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from logit_service.demo.report import conclusion


def _record(max_error: float, *, clip: float, mask: float, recompute_mask: float, stale: int = 2):
    def view(c, m):
        return {"loss/clipfrac": c, "discrepancy/masked_frac": m}

    return SimpleNamespace(
        max_error=max_error, tokens=100, partial=3, sequences=8, staleness_max=stale,
        views={"exact": view(clip, mask), "ewma": view(0.0, 0.1), "recompute": view(0.0, recompute_mask)},
    )


@pytest.mark.parametrize(
    ("max_error", "verdict"),
    [
        pytest.param(9.5e-7, "matched", id="within tolerance"),
        pytest.param(2e-5, "did NOT match", id="beyond tolerance"),
    ],
)
def test_the_verdict_follows_the_worst_error(max_error, verdict):
    records = [_record(1e-7, clip=0.1, mask=0.0, recompute_mask=0.3), _record(max_error, clip=0.3, mask=0.0, recompute_mask=0.5)]

    sentence = conclusion(records, tolerance=1e-5)

    assert sentence.startswith(f"Result: over 2 steps the service's old log-probs {verdict} direct forwards")
    assert f"max |err| {max_error:.1e}" in sentence


def test_the_figures_are_the_means_over_steps():
    records = [_record(1e-7, clip=0.1, mask=0.0, recompute_mask=0.3), _record(1e-7, clip=0.3, mask=0.02, recompute_mask=0.5, stale=3)]

    sentence = conclusion(records, tolerance=1e-5)

    assert "on 200 tokens up to 3 versions stale, 6 of 16 responses spanning several versions" in sentence
    assert "the loss clipped 20.0% and masked 1.0% of tokens with them" in sentence
    assert "against 0.0% clipped and 40.0% masked with log-probs recomputed" in sentence

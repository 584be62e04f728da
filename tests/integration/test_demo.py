"""The README's first command keeps working: the demo runs its loop and its exactness check passes."""

from __future__ import annotations

from logit_service.demo.run import run_demo


def test_demo_runs_and_every_answer_matches_a_direct_forward(capsys):
    assert run_demo(versions=4, seed=1) == 0
    out = capsys.readouterr().out
    assert "exactness: max |service − direct forward|" in out and ": OK" in out
    assert "recompute clip" in out  # the loss comparison table is printed

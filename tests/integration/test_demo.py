"""The README's first command keeps working: the demo runs its loop, its exactness check passes, it draws
its plots and closes with a sentence built from the run's own numbers."""

from __future__ import annotations

import re

from logit_service.demo.run import run_demo

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_demo_runs_and_every_answer_matches_a_direct_forward(capsys, tmp_path):
    assert run_demo(versions=4, seed=1, plot_dir=tmp_path / "plots") == 0
    out = capsys.readouterr().out
    assert "exactness: max |service − direct forward|" in out and ": OK" in out
    assert "recompute clip" in out  # the loss comparison table is printed

    # Each step is reported as it happens, before the summary tables.
    step_lines = [line for line in out.splitlines() if re.match(r"step \d+: ", line)]
    assert [line.split(":")[0] for line in step_lines] == [f"step {i}" for i in range(4)]
    assert out.index("step 3:") < out.index("Exact old log-probs from the service")

    # The plots exist, are PNG files, and the output says where they are.
    for name in ("demo-exactness.png", "demo-loss-views.png"):
        path = tmp_path / "plots" / name
        assert path.read_bytes()[:8] == PNG_MAGIC
        assert str(path.resolve()) in out

    # The last line is the one-sentence result, and its figures are the run's.
    last = out.strip().splitlines()[-1]
    assert last.startswith("Result: over 4 steps the service's old log-probs matched direct forwards")
    assert last.endswith(".") and last.count(". ") == 0
    worst = float(re.search(r"max \|err\| ([0-9.e+-]+),", last).group(1))
    printed = float(re.search(r"max \|service − direct forward\| = ([0-9.e+-]+)", out).group(1))
    assert worst == float(f"{printed:.1e}")
    tokens = int(re.search(r"on (\d+) tokens", last).group(1))
    assert tokens == sum(int(re.search(r"scored (\d+) tokens", line).group(1)) for line in step_lines)

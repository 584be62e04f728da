"""Every benchmark runs, tiny, in the suite, so that none can rot unnoticed. Figures are not checked:
tests never assert on timing; only that each run completes and writes its results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "floor_concurrency.py": ["--quick"],
    "service_overhead.py": ["--vocab-size", "256", "--hidden-size", "32", "--layers", "1", "--batch", "2",
                            "--seq-len", "32", "--reps", "2", "--warmup", "1", "--threads", "1"],
    "snapshot_load.py": ["--vocab-size", "256", "--hidden-size", "32", "--layers", "1", "--reps", "2",
                         "--warmup", "1", "--cold-reps", "1", "--threads", "1"],
    "stream_publish.py": ["--vocab-size", "256", "--hidden-size", "32", "--layers", "1", "--reps", "2",
                          "--warmup", "1", "--threads", "1"],
    "trl_grpo_overhead.py": ["--steps", "1", "--reps", "1", "--warmup", "0", "--threads", "1"],
}  # fmt: skip


@pytest.mark.parametrize("script", sorted(TINY))
def test_benchmark_runs_and_writes_its_results(script, tmp_path):
    output = tmp_path / "results.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *TINY[script], "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(output.read_text())
    assert results, f"{script} wrote empty results"


FLOOR_NAMES = {
    "compact_bytes_fp32", "compact_bytes_bf16", "compact_load", "concurrent_8_clients", "swap_vs_copy",
    "cold_load_vs_read", "service_vs_inprocess_8x512", "service_vs_inprocess_8k", "peak_memory_8k", "stream_vs_loopback",
}  # fmt: skip


def test_the_floors_table_runs_quick_and_each_met_follows_from_its_ratio_and_goal(tmp_path):
    output = tmp_path / "floors.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "floors.py"), "--quick", "--threads", "1", "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=1800,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = json.loads(output.read_text())
    assert FLOOR_NAMES <= {r["name"] for r in rows}
    for r in rows:
        assert {"name", "value", "floor", "ratio", "goal", "met"} <= set(r), r
        if r["name"] == "concurrent_8_clients" and r["value"] is None:
            continue  # reported as not measured where its benchmark is absent
        if r["name"] == "cold_load_vs_read" and r["value"] is None:
            continue  # a machine whose page cache cannot be emptied
        assert r["value"] is not None and r["floor"], r
        assert r["ratio"] == pytest.approx(r["value"] / r["floor"]), r
        if isinstance(r["goal"], (int, float)):  # rows of other modules give a bare number
            assert isinstance(r["met"], bool), r
        elif r["goal"] is not None:
            op, bound = r["goal"].split()
            assert r["met"] == (r["ratio"] <= float(bound) if op == "<=" else r["ratio"] >= float(bound)), r
    assert all(name in run.stdout for name in FLOOR_NAMES), "the table printed lacks a row"


def test_a_fuzz_sample_over_the_wire_finds_no_internal_error_hang_or_crash(tmp_path):
    output = tmp_path / "fuzz.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fuzz_wire.py"), "--cases", "400", "--seed", "7", "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    results = json.loads(output.read_text())
    assert results["cases"] == 400
    assert results["internal_or_unknown"] == 0, results["bad_examples"]
    assert results["hangs"] == 0 and results["crashes"] == 0 and results["healthy_after"]
    assert len(results["statuses"]) >= 3, "the cases no longer reach the server's checks"
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

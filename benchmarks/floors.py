"""Every cost against its floor, in one run: `make bench` (or `--quick`, tiny, as the test suite runs it).

Runs the benchmarks of this directory, each measuring its own side and its floor side by side in
interleaved rounds, and collects one row per ratio into `benchmarks/results/floors.json`:
`{"name", "value", "floor", "ratio", "goal", "met", "unit", "source", "note"}`, ratio = value / floor,
goal an upper bound (`<=`) or a lower bound (`>=`) on the ratio, met = whether the ratio is within it.

  compact_bytes_fp32 / _bf16      a retained version's delta vs its full copy (compact_snapshots.py)
  compact_load                    loading a compact version vs loading the same version stored full
  concurrent_8_clients            from benchmarks/floor_concurrency.py when it is there
  swap_vs_copy                    version swap into the resident model vs copying its tensors (snapshot_load.py)
  cold_load_vs_read               cold verified load vs reading the file into fresh memory (snapshot_load.py)
  service_vs_inprocess_8x512      service throughput vs the same backend in-process (service_overhead.py)
  service_vs_inprocess_8k         the same for one 8k-token trajectory
  peak_memory_8k                  memory added while scoring an 8k-token sequence vs the model's own size
  stream_vs_loopback              UploadVersion's transfer rate vs a raw loopback TCP copy of the same bytes (stream_publish.py)

    .venv/bin/python benchmarks/floors.py            # full figures (tens of minutes on 2 cores)
    .venv/bin/python benchmarks/floors.py --quick    # tiny models: checks every part still runs
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_OUTPUT = RESULTS / "floors.json"
TINY_MODEL = ["--vocab-size", "256", "--hidden-size", "32", "--layers", "1"]

# script, its arguments (full, quick), its results file in a full run
RUNS = {
    "compact": ("compact_snapshots.py", [], [*TINY_MODEL, "--versions", "4", "--reps", "2", "--warmup", "1", "--seq-len", "16",
                                        "--max-shard-bytes", "40000"],
                "compact_snapshots.json"),
    "load": ("snapshot_load.py", [], [*TINY_MODEL, "--reps", "2", "--warmup", "1", "--cold-reps", "1",
                                      "--max-shard-bytes", "40000"], "snapshot_load.json"),  # several shards, as a large model
    "service": ("service_overhead.py", [], [*TINY_MODEL, "--batch", "2", "--seq-len", "32", "--reps", "2", "--warmup", "1"],
                "service_overhead.json"),
    "service_8k": ("service_overhead.py", ["--batch", "1", "--seq-len", "8192", "--reps", "5", "--warmup", "1"],
                   [*TINY_MODEL, "--batch", "1", "--seq-len", "256", "--reps", "2", "--warmup", "1"], "service_overhead_8k.json"),
    "stream": ("stream_publish.py", [], [*TINY_MODEL, "--reps", "2", "--warmup", "1"], "stream_publish.json"),
}  # fmt: skip

# Peak memory while scoring one long sequence, in a fresh process: RSS sampled every millisecond on a
# second thread, against the RSS just before the call, and against the model's parameter bytes.
_PEAK_MEMORY = """\
import json, sys, threading, time, os
import numpy as np, torch
from logit_service.backends.torch_backend import ScoreItem, TorchBackend
from logit_service.demo.tiny_model import build_tiny_model
vocab, hidden, layers, length = (int(a) for a in sys.argv[1:5])
torch.set_num_threads(int(sys.argv[5]))
model = build_tiny_model(seed=0, vocab_size=vocab, hidden_size=hidden, layers=layers, max_positions=max(2048, length))
state = {k: v.detach().clone() for k, v in model.state_dict().items()}
model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
backend = TorchBackend()
backend.ensure_model(model.config.to_dict())
backend.load("0", "digest", state)
del model
tokens = np.random.default_rng(0).integers(0, vocab, size=length).astype(np.int64)
item = [ScoreItem(tokens, np.arange(1, length))]
backend.score(item)  # warm: allocator pools and one-time buffers are not counted as the call's
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
peak, done = [0], threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss()); time.sleep(0.001)
before = rss()
thread = threading.Thread(target=sample); thread.start()
backend.score(item)
done.set(); thread.join()
print(json.dumps({"rss_before": before, "rss_peak": max(peak[0], rss()), "model_bytes": model_bytes, "tokens": length}))
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny models and few rounds: checks that every part runs")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads in every benchmark")
    p.add_argument("--collect", action="store_true",
                   help="measure nothing: rebuild the table from the results files a full run left in benchmarks/results "
                        "(a missing one is reported as not measured)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="floors JSON")
    return p.parse_args(argv)


def row(name: str, value, floor, goal: str | None, *, unit: str, source: str, note: str = "") -> dict:
    """One floors.json entry; goal is "<= x" or ">= x" on the ratio (None: reported, no goal set)."""
    ratio = None if value is None or not floor else value / floor
    met = None
    if goal is not None and ratio is not None:
        op, bound = goal.split()
        met = ratio <= float(bound) if op == "<=" else ratio >= float(bound)
    return {"name": name, "value": value, "floor": floor, "ratio": ratio, "goal": goal, "met": met,
            "unit": unit, "source": source, "note": note}  # fmt: skip


def run_script(script: str, args: list[str], output: Path, threads: int) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "clients"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, str(REPO / "benchmarks" / script), *args, "--threads", str(threads), "--output", str(output)]
    print(f"\n$ {' '.join(cmd[1:])}", flush=True)
    run = subprocess.run(cmd, cwd=REPO, env=env, text=True)
    if run.returncode != 0:
        raise SystemExit(f"{script} failed with exit status {run.returncode}")
    return json.loads(output.read_text())


def compact_rows(r: dict) -> list[dict]:
    src = "compact_snapshots.py"
    rows = []
    for dtype, name, goal in (("float32", "compact_bytes_fp32", "<= 0.15"), ("bfloat16", "compact_bytes_bf16", "<= 0.05")):
        d = r[dtype]
        worst = max(d["per_version"], key=lambda x: x["ratio"])
        rows.append(row(name, worst["delta_bytes"], d["full_file_bytes"], goal, unit="bytes", source=src,
                        note=f"largest of {len(d['per_version'])} consecutive deltas (median ratio {d['delta_ratio_median']:.4f}); "
                             f"order-0 entropy of the bit-pattern difference: {d['entropy_floor_ratio_median']:.4f} of a full copy"
                             + (f", of the difference from the two neighbours' trend: {trend:.4f}"
                                if (trend := d.get("trend_entropy_floor_ratio_median")) is not None else "")))  # fmt: skip
    d = r["float32"]["load_ms"]
    rows.append(row("compact_load", d["compact"]["median"], d["full"]["median"], "<= 1.5", unit="ms", source=src,
                    note=f"fp32, delta from a full neighbour on disk, no RAM cache; neighbour in RAM: "
                         f"{r['float32']['load_ratio']['compact_base_in_ram']:.2f}x, chain of {r['float32']['chain_of_longest']}: "
                         f"{r['float32']['load_ratio']['compact_longest_chain']:.2f}x; bf16: {r['bfloat16']['load_ratio']['compact']:.2f}x"))  # fmt: skip
    return rows


def load_rows(r: dict) -> list[dict]:
    src = "snapshot_load.py"
    swap = r["swap"]
    rows = [row("swap_vs_copy", swap["modes"]["swap_ours_backend_load"]["median_ms"], swap["modes"][swap["floor"]]["median_ms"],
                "<= 1.3", unit="ms", source=src, note=f"floor: {swap['floor']}; {swap['param_bytes_copied']} bytes per swap")]  # fmt: skip
    cold = r["disk_cold"]
    if cold.get("measured"):
        m = cold["modes"]
        rows.append(row("cold_load_vs_read", m["ours_load_verified_weights"]["median_ms"], m["read_fresh_buffer"]["median_ms"],
                        "<= 1.5", unit="ms", source=src,
                        note=f"file evicted ({cold['eviction']}) before each call; vs safetensors load_file+clone: "
                             f"{cold['ratios']['ours_over_floor_b']['of_medians']:.2f}x"))  # fmt: skip
    else:
        rows.append(row("cold_load_vs_read", None, None, "<= 1.5", unit="ms", source=src,
                        note=f"not measured: the page cache could not be emptied ({cold.get('eviction_notes')})"))
    return rows


def stream_rows(r: dict) -> list[dict]:
    m = r["modes"]
    return [row("stream_vs_loopback", m["upload"]["mib_per_s"], m["loopback"]["mib_per_s"], ">= 0.5", unit="MiB/s",
                source="stream_publish.py",
                note=f"{r['model']['bytes_sent'] / 2**20:.1f} MiB fp32 version, full files, 1 MiB messages; floor: the same "
                     f"bytes over a raw TCP socket on 127.0.0.1 into an fsync'd file; per-round ratio "
                     f"{r['ratio_median_of_per_round']:.3f}")]  # fmt: skip


def service_rows(r: dict, name: str) -> list[dict]:
    m = r["modes"]
    per_round = r["ratios_tokens_per_s_median_of_per_round"]["service_vs_backend"]
    return [row(name, m["service"]["tokens_per_s"], m["backend"]["tokens_per_s"], ">= 0.95", unit="tokens/s",
                source="service_overhead.py",
                note=f"{r['batch']['sequences']} x {r['batch']['seq_len']} tokens; per-round ratio {per_round:.3f}; "
                     f"vs the direct forward (a): {m['service']['tokens_per_s'] / m['direct']['tokens_per_s']:.3f}")]  # fmt: skip


def peak_memory_row(quick: bool, threads: int) -> dict:
    dims = ["256", "32", "1", "512"] if quick else ["4096", "256", "4", "8192"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "clients")]),
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))  # fmt: skip
    run = subprocess.run([sys.executable, "-c", _PEAK_MEMORY, *dims, str(threads)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=3600)  # fmt: skip
    if run.returncode != 0:
        raise SystemExit(f"peak-memory run failed:\n{run.stderr[-3000:]}")
    m = json.loads(run.stdout.strip().splitlines()[-1])
    return row("peak_memory_8k", m["rss_peak"] - m["rss_before"], m["model_bytes"], None, unit="bytes",
               source="floors.py", note=f"RSS added while scoring one {m['tokens']}-token sequence (torch backend, "
                                        f"float32, defaults) vs the model's parameter bytes; no goal set")  # fmt: skip


def concurrency_rows(quick: bool, collect: bool = False) -> list[dict]:
    """Measured here (the benchmark has no script entry in RUNS), or with --collect read from its last
    results file."""
    try:
        module = importlib.import_module("benchmarks.floor_concurrency")
    except ModuleNotFoundError as e:
        if e.name not in ("benchmarks.floor_concurrency", "benchmarks"):
            raise
        return [row("concurrent_8_clients", None, None, ">= 0.9", unit="tokens/s", source="benchmarks/floor_concurrency.py",
                    note="not measured: benchmarks/floor_concurrency.py is not in this tree")]  # fmt: skip
    if collect:
        path = RESULTS / "floor_concurrency.json"
        if not path.exists():
            return [row("concurrent_8_clients", None, None, ">= 0.9", unit="tokens/s", source="floor_concurrency.py",
                        note="not measured: no results/floor_concurrency.json")]  # fmt: skip
        return module.rows(json.loads(path.read_text()))
    return list(module.measure(quick=quick))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    sys.path.insert(0, str(REPO))
    rows: list[dict] = []
    results: dict[str, dict | None] = {}
    if args.collect:
        for key, (_, _, _, out_name) in RUNS.items():
            path = RESULTS / out_name
            results[key] = json.loads(path.read_text()) if path.exists() else None
    else:
        with tempfile.TemporaryDirectory(prefix="floors-") as tmp:
            for key, (script, full_args, quick_args, out_name) in RUNS.items():
                output = Path(tmp) / out_name if args.quick else RESULTS / out_name
                results[key] = run_script(script, quick_args if args.quick else full_args, output, args.threads)
    rows += _or_missing(compact_rows, results["compact"], ["compact_bytes_fp32", "compact_bytes_bf16", "compact_load"])
    rows += concurrency_rows(args.quick, collect=args.collect)
    rows += _or_missing(load_rows, results["load"], ["swap_vs_copy", "cold_load_vs_read"])
    rows += _or_missing(lambda r: service_rows(r, "service_vs_inprocess_8x512"), results["service"], ["service_vs_inprocess_8x512"])
    rows += _or_missing(lambda r: service_rows(r, "service_vs_inprocess_8k"), results["service_8k"], ["service_vs_inprocess_8k"])
    rows += _or_missing(stream_rows, results["stream"], ["stream_vs_loopback"])
    if args.collect:
        previous = json.loads(args.output.read_text()) if args.output.exists() else []
        rows += [r for r in previous if r["name"] == "peak_memory_8k"] or [
            row("peak_memory_8k", None, None, None, unit="bytes", source="floors.py", note="not measured in this run")]
    else:
        rows.append(peak_memory_row(args.quick, args.threads))
    print_table(rows)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nwrote {args.output} ({time.perf_counter() - started:.0f} s in all{', quick' if args.quick else ''})")
    return 0


def _or_missing(make_rows, result: dict | None, names: list[str]) -> list[dict]:
    if result is not None:
        return make_rows(result)
    goals = {"compact_bytes_fp32": "<= 0.15", "compact_bytes_bf16": "<= 0.05", "compact_load": "<= 1.5",
             "swap_vs_copy": "<= 1.3", "cold_load_vs_read": "<= 1.5", "stream_vs_loopback": ">= 0.5"}  # fmt: skip
    return [row(n, None, None, goals.get(n, ">= 0.95"), unit="-", source="-", note="not measured: its results file is missing")
            for n in names]  # fmt: skip


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def print_table(rows: list[dict]) -> None:
    print(f"\n{'name':<28} {'value':>12} {'floor':>12} {'ratio':>8} {'goal':>8} {'met':>5}  unit")
    for r in rows:
        met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
        print(f"{r['name']:<28} {_fmt(r['value']):>12} {_fmt(r['floor']):>12} {_fmt(r['ratio']):>8} "
              f"{r['goal'] or '-':>8} {met:>5}  {r.get('unit', '')}")


if __name__ == "__main__":
    sys.exit(main())

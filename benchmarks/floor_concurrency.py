"""Concurrency against its floor: 8 clients sending small Score calls at once vs one client sending the
same tokens as one large call, and per-call latency for 1, 4 and 16 concurrent clients, side by side.

The server runs in a separate process (`logit-service serve`, launched as in service_overhead.py, same
torch threads). Each timed round runs every mode once, in a rotating order:

  large            1 client; `--calls` calls in a loop, each of `--clients` sequences x `--seq-len` tokens
  concurrent       `--clients` clients at once, each `--calls` calls in a loop of 1 sequence x `--seq-len`
  latency, c = 1, 4, 16   c clients at once, each `--calls` calls of 1 sequence; every call's latency kept

The floor of `concurrent` is `large`: the same tokens in the same number of rounds, with no wait for
company and no per-call overhead shared out. Goal: concurrent tokens/s >= 0.9 x large tokens/s.
Checks that every concurrent answer equals the large call's answer for the same sequence bit for bit
(and a direct forward within 1e-5); exits 1 otherwise.

    .venv/bin/python benchmarks/floor_concurrency.py            # Qwen2 4096/256/4, 8 clients x 256 tokens
    .venv/bin/python benchmarks/floor_concurrency.py --quick    # tiny, seconds (the test suite runs it)

`measure(quick)` runs it and returns the floors-table rows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script, benchmarks/ is on the path, not the repository
    sys.path.insert(0, str(REPO))

from benchmarks.service_overhead import ServerProcess, cpu_model  # noqa: E402

DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "floor_concurrency.json"
GOAL = 0.9
EXACT_ATOL = 1e-5
QUICK = ["--vocab-size", "256", "--hidden-size", "32", "--layers", "1", "--seq-len", "32", "--calls", "1",
         "--reps", "1", "--threads", "1"]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--hidden-size", type=int, default=256, help="intermediate size is 2x; 4 heads, 2 KV heads")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (every client sends one per call)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients, and sequences per large call")
    p.add_argument("--latency-clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--calls", type=int, default=10, help="calls each client makes per round, in a loop")
    p.add_argument("--reps", type=int, default=5, help="timed rounds (each runs every mode)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads in the server")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shrink-partial-tiles", action="store_true",
                   help="server with --shrink-partial-tiles (default: every tile keeps its bucket's full rows)")
    p.add_argument("--quick", action="store_true", help="tiny model and rounds: only checks that it runs")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = p.parse_args(argv)
    if args.quick:
        args = p.parse_args(QUICK + [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--quick"])
        args.quick = True
    return args


def _clients_loop(address: str, requests: list[list], calls: int, latencies: list[float], results: dict, lock) -> float:
    """Every client on its own thread and channel; each makes `calls` calls of its request. Wall seconds."""
    from logit_client import LogitClient

    clients = [LogitClient(address, timeout_s=600, max_retries=0) for _ in requests]
    for c in clients:  # connected before the timed calls, as a client that keeps its channel is
        c.health()
    start = threading.Barrier(len(requests) + 1)

    def work(index: int) -> None:
        start.wait()
        for _ in range(calls):
            t0 = time.perf_counter()
            answer = clients[index].score(requests[index])
            with lock:
                latencies.append(time.perf_counter() - t0)
                results[index] = answer
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for c in clients:
        c.close()
    return wall


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_COUNTERS = ("logit_service_score_batches_total", "logit_service_batched_score_calls_total",
             "logit_service_tile_rows_forwarded_total", "logit_service_tile_rows_used_total")


def _batching_counters(metrics_url: str) -> tuple[float, ...]:
    """(engine calls, Score calls they answered, tile rows forwarded, tile rows holding a sequence)
    from the server's /metrics."""
    import urllib.request

    text = urllib.request.urlopen(metrics_url, timeout=30).read().decode()
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in _COUNTERS:
            values[name] = float(value)
    return tuple(values[name] for name in _COUNTERS)


def run(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from logit_client import LogitClient, SequenceInput
    from logit_service.demo.tiny_model import build_tiny_model, reference_logprobs

    started = time.perf_counter()
    load_at_start = os.getloadavg()
    n, L = args.clients, args.seq_len
    model = build_tiny_model(seed=args.seed, vocab_size=args.vocab_size, hidden_size=args.hidden_size,
                             layers=args.layers, max_positions=max(2048, L))  # fmt: skip
    rng = np.random.default_rng(args.seed)
    tokens = [rng.integers(0, args.vocab_size, size=L).astype(np.int64) for _ in range(max(n, *args.latency_clients))]
    seqs = [SequenceInput(t, spans=((0, 1, L),), sample_id=str(i)) for i, t in enumerate(tokens)]
    with tempfile.TemporaryDirectory(prefix="logit-bench-") as tmp:
        tmp_path = Path(tmp)
        metrics_port = _free_port()
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        server_args = ["--metrics-port", str(metrics_port)] + (["--shrink-partial-tiles"] if args.shrink_partial_tiles else [])
        server = ServerProcess(tmp_path / "snapshots", args.threads, tmp_path / "server.log", server_args).start()
        try:
            with LogitClient(server.address, timeout_s=600) as client:
                client.publish(0, model, tmp_path / "snapshots")
                large_answer = client.score(seqs[:n])  # warm-up; also the reference answers
                # Partial tiles of 1, 2 and 4 rows: the server checks each shrunk shape once, on its first
                # use (row_checks.py), and that one-time cost belongs in the warm-up, not in a timed round.
                for k in (1, 2, 3):
                    client.score(seqs[:k])
            lock = threading.Lock()

            def large() -> tuple[float, list[float]]:
                lat: list[float] = []
                return _clients_loop(server.address, [seqs[:n]], args.calls, lat, {}, lock), lat

            concurrent_answers: dict = {}

            def concurrent() -> tuple[float, list[float]]:
                lat: list[float] = []
                return _clients_loop(server.address, [[s] for s in seqs[:n]], args.calls, lat, concurrent_answers, lock), lat

            def latency(c: int):
                def mode() -> tuple[float, list[float]]:
                    lat: list[float] = []
                    return _clients_loop(server.address, [[s] for s in seqs[:c]], args.calls, lat, {}, lock), lat
                return mode

            modes = {"large": large, "concurrent": concurrent, **{f"latency_{c}": latency(c) for c in args.latency_clients}}
            concurrent()  # warm-up of the concurrent path
            walls: dict[str, list[float]] = {m: [] for m in modes}
            lats: dict[str, list[float]] = {m: [] for m in modes}
            batching: dict[str, list[float]] = {m: [0.0] * len(_COUNTERS) for m in modes}  # sums of _COUNTERS
            names = list(modes)
            for rep in range(args.reps):
                for name in names[rep % len(names):] + names[: rep % len(names)]:
                    before = _batching_counters(metrics_url)
                    wall, lat = modes[name]()
                    after = _batching_counters(metrics_url)
                    walls[name].append(wall)
                    lats[name].extend(lat)
                    batching[name] = [total + a - b for total, a, b in zip(batching[name], after, before)]
        finally:
            server.stop()

    # Exactness: each concurrent answer equals the large call's answer for that sequence, bit for bit.
    bitwise = all(
        concurrent_answers[i].sequences[0].logprobs.tobytes() == large_answer.sequences[i].logprobs.tobytes() for i in range(n)
    )
    direct = max(
        float(np.abs(large_answer.sequences[i].logprobs[1:] - reference_logprobs(model, tokens[i]).numpy()[1:]).max())
        for i in range(n)
    )
    scored = n * (L - 1) * args.calls  # per round, in both throughput modes
    large_tps = [scored / w for w in walls["large"]]
    conc_tps = [scored / w for w in walls["concurrent"]]
    per_round = [c / g for c, g in zip(conc_tps, large_tps)]
    ratio_of_medians = float(np.median(conc_tps) / np.median(large_tps))
    latency = {
        c: {"clients": c, "calls": len(lats[f"latency_{c}"]), "p50_ms": float(np.percentile(lats[f"latency_{c}"], 50) * 1e3),
            "p99_ms": float(np.percentile(lats[f"latency_{c}"], 99) * 1e3),
            "tokens_per_s": float(np.median([c * (L - 1) * args.calls / w for w in walls[f"latency_{c}"]]))}
        for c in args.latency_clients
    }  # fmt: skip
    return {
        "benchmark": "floor_concurrency",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([".venv/bin/python", "benchmarks/floor_concurrency.py", *args.argv]),
        "model": {"type": "qwen2", "vocab_size": args.vocab_size, "hidden_size": args.hidden_size, "layers": args.layers,
                  "parameters": sum(p.numel() for p in model.parameters()), "dtype": "float32"},
        "workload": {"clients": n, "seq_len": L, "calls_per_client_per_round": args.calls, "reps": args.reps},
        "large": {"tokens_per_s_median": float(np.median(large_tps)), "samples_tokens_per_s": large_tps,
                  "call_p50_ms": float(np.percentile(lats["large"], 50) * 1e3)},
        "concurrent": {"tokens_per_s_median": float(np.median(conc_tps)), "samples_tokens_per_s": conc_tps,
                       "call_p50_ms": float(np.percentile(lats["concurrent"], 50) * 1e3)},
        "ratio_concurrent_vs_large": {"of_medians": ratio_of_medians, "median_per_round": float(np.median(per_round)),
                                      "best": float(max(conc_tps) / max(large_tps)), "goal": GOAL},
        "latency": latency,
        # Score calls per engine call in each mode: how many callers shared a batch, on average.
        "calls_per_batch": {m: (v[1] / v[0] if v[0] else None) for m, v in batching.items()},
        # Tile rows forwarded per row that held a sequence: 1.0 = no dummy rows.
        "tile_rows_per_sequence_row": {m: (v[2] / v[3] if v[3] else None) for m, v in batching.items()},
        "shrink_partial_tiles": args.shrink_partial_tiles,
        "exactness": {"concurrent_equals_large_bitwise": bitwise, "max_abs_vs_direct": direct, "tolerance": EXACT_ATOL,
                      "ok": bitwise and direct <= EXACT_ATOL},
        "machine": {"cpu_count": os.cpu_count(), "cpu_model": cpu_model(), "load_average_at_start": list(load_at_start),
                    "load_average_at_end": list(os.getloadavg()), "torch": torch.__version__,
                    "server_torch_threads": server.torch_threads},
        "wall_s": time.perf_counter() - started,
    }  # fmt: skip


def rows(report: dict) -> list[dict]:
    """The floors-table rows: ratio = value / floor, met = ratio >= goal."""
    ratio = report["ratio_concurrent_vs_large"]["median_per_round"]
    return [{
        "name": "concurrent_8_clients",
        "value": report["concurrent"]["tokens_per_s_median"],
        "floor": report["large"]["tokens_per_s_median"],
        "ratio": ratio,
        "goal": f">= {GOAL}",
        "met": bool(ratio >= GOAL),
        "unit": "tokens/s",
        "source": "floor_concurrency.py",
        "note": (f"8 clients x 1 x 256 tokens vs 1 client x 8 x 256; ratio: median of each round's own ratio "
                 f"(of medians: {report['concurrent']['tokens_per_s_median'] / report['large']['tokens_per_s_median']:.3f}); "
                 f"every answer bit-identical to the large call's"),
    }]  # fmt: skip


def measure(quick: bool) -> list[dict]:
    """Runs the benchmark (tiny when quick) and returns its floors-table rows."""
    args = parse_args(["--quick"] if quick else [])
    args.argv = ["--quick"] if quick else []
    report = run(args)
    if not report["exactness"]["ok"]:
        raise AssertionError(f"concurrent answers are not exact: {report['exactness']}")
    if not quick:  # the full run's figures, for `floors.py --collect` and the README
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({**report, "rows": rows(report)}, indent=2) + "\n")
    return rows(report)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    report = run(args)
    r, lat = report["ratio_concurrent_vs_large"], report["latency"]
    print(f"model {report['model']['parameters'] / 1e6:.2f} M params; {args.clients} x {args.seq_len} tokens, "
          f"{args.calls} calls per client per round, {args.reps} rounds")
    print(f"{'mode':<44} {'tokens/s (median)':>18} {'call p50 ms':>12}")
    print(f"{'large: 1 client, ' + str(args.clients) + ' sequences per call':<44} {report['large']['tokens_per_s_median']:>18.0f} "
          f"{report['large']['call_p50_ms']:>12.1f}")
    print(f"{'concurrent: ' + str(args.clients) + ' clients, 1 sequence per call':<44} "
          f"{report['concurrent']['tokens_per_s_median']:>18.0f} {report['concurrent']['call_p50_ms']:>12.1f}")
    print(f"concurrent / large: {r['of_medians']:.3f} of medians, {r['median_per_round']:.3f} per round, "
          f"{r['best']:.3f} best (goal >= {GOAL})")
    print(f"{'clients':>8} {'p50 ms':>10} {'p99 ms':>10} {'tokens/s':>10}")
    for c, v in lat.items():
        print(f"{c:>8} {v['p50_ms']:>10.1f} {v['p99_ms']:>10.1f} {v['tokens_per_s']:>10.0f}")
    print("Score calls per engine call: " + ", ".join(
        f"{m} {v:.2f}" for m, v in report["calls_per_batch"].items() if v is not None))
    print("tile rows forwarded per sequence row: " + ", ".join(
        f"{m} {v:.2f}" for m, v in report["tile_rows_per_sequence_row"].items() if v is not None))
    e = report["exactness"]
    print(f"exactness: concurrent == large bit for bit: {e['concurrent_equals_large_bitwise']}; "
          f"max |served - direct| {e['max_abs_vs_direct']:.2e}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({**report, "rows": rows(report)}, indent=2) + "\n")
    print(f"wrote {args.output} ({report['wall_s']:.0f} s)")
    return 0 if e["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""Service overhead: the same model and batch scored three ways, side by side, in one run.

  (a) direct forward   in this process, as a trainer computes old log-probs itself:
                       model(input_ids).logits -> float32 log_softmax -> gather
  (b) backend          the service's own TorchBackend.score, in this process (no wire)
  (c) service          LogitClient.score -> gRPC on loopback -> `logit-service serve` in a separate
                       process -> back

Fairness: the server process and this one use the same number of torch threads (set explicitly here
and in the server's launcher, and OMP_NUM_THREADS / MKL_NUM_THREADS in its environment); the server's
background upkeep (directory scan, heartbeat, EWMA folding) is switched off or slowed so it is idle
while (a) and (b) run; each timed round runs the three modes one after another in a rotating order,
after warm-up, so drift on a shared machine hits all three alike.

Also checks once that (c) equals (b) bit for bit and (a) within 1e-5; exits 1 on a mismatch.

    .venv/bin/python benchmarks/service_overhead.py            # defaults: Qwen2 4096/256/4, 8 x 512
    .venv/bin/python benchmarks/service_overhead.py --help
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "service_overhead.json"
EXACT_ATOL = 1e-5

# Runs `logit-service serve` (logit_service.cli.main) after pinning torch's thread count, and reports the
# count seen by the main thread and by a fresh worker thread (the server computes in a worker thread).
_SERVER_LAUNCHER = """\
import sys, concurrent.futures, torch
torch.set_num_threads(int(sys.argv[1]))
with concurrent.futures.ThreadPoolExecutor(1) as pool:
    worker = pool.submit(torch.get_num_threads).result()
print(f"torch_threads main={torch.get_num_threads()} worker={worker}", flush=True)
from logit_service.cli import main
sys.exit(main(sys.argv[2:]))
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--hidden-size", type=int, default=256, help="intermediate size is 2x; 4 heads, 2 KV heads")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=8, help="sequences per request")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per sequence; positions 1..seq_len-1 are scored")
    p.add_argument("--reps", type=int, default=20, help="timed repetitions of each mode")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls of each mode first")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads, here and in the server")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-invariant", action=argparse.BooleanOptionalAction, default=None,
                   help="the service's batch-invariant mode, in the server and in (b); unset keeps the server's default")
    p.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=None,
                   help="the server's fixed malloc thresholds; unset keeps the server's default (on)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    return p.parse_args(argv)


# --- the server process ---------------------------------------------------------------------------


class ServerProcess:
    """`logit-service serve` in a child process on a free loopback port; ready once health says SERVING."""

    def __init__(self, snapshot_dir: Path, threads: int, log_path: Path, extra_args: list[str]) -> None:
        self.threads = threads
        self.log_path = log_path
        self.args = [
            sys.executable, "-c", _SERVER_LAUNCHER, str(threads),
            "--log-level", "WARNING", "serve",
            "--host", "127.0.0.1", "--port", "0", "--snapshot-dir", str(snapshot_dir),
            "--no-ewma-enabled",  # no EWMA folding in the background after publishing
            "--scan-interval-s", "3600", "--heartbeat-s", "3600",  # keep it idle between calls
            "--grace-s", "0.5", *extra_args,
        ]
        self.process: subprocess.Popen | None = None
        self.address = ""
        self.torch_threads: dict[str, int] = {}

    def start(self, timeout_s: float = 120.0) -> "ServerProcess":
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "clients"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(self.args, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + timeout_s
        while not self.address:  # the port is printed once bound
            text = self.log_path.read_text()
            if m := re.search(r"torch_threads main=(\d+) worker=(\d+)", text):
                self.torch_threads = {"main": int(m.group(1)), "worker": int(m.group(2))}
            if m := re.search(r"listening on (\S+)", text):
                self.address = m.group(1)
                break
            self._check_alive(deadline, timeout_s)
            time.sleep(0.05)
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0).status == health_pb2.HealthCheckResponse.SERVING:
                        return self
                except grpc.RpcError:
                    pass
                self._check_alive(deadline, timeout_s)
                time.sleep(0.05)

    def _check_alive(self, deadline: float, timeout_s: float) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{self.log_path.read_text()}")
        if time.monotonic() > deadline:
            self.stop()
            raise TimeoutError(f"server not ready after {timeout_s} s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
        self._log.close()


# --- measuring ------------------------------------------------------------------------------------


def stats(seconds: list[float], tokens: int) -> dict:
    import numpy as np

    arr = np.asarray(seconds)
    median = float(np.median(arr))
    return {
        "median_s": median,
        "p90_s": float(np.percentile(arr, 90)),
        "min_s": float(arr.min()),
        "max_s": float(arr.max()),
        "tokens_per_s": tokens / median,
        "samples_s": [float(s) for s in seconds],
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    # Before torch is imported, so this process's OpenMP/MKL pools start at the same size as the server's.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    started = time.perf_counter()
    load_at_start = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="logit-bench-") as tmp:
        tmp_path = Path(tmp)
        # Start the server first: its imports overlap with building the model here.
        extra = [] if args.batch_invariant is None else ["--batch-invariant" if args.batch_invariant else "--no-batch-invariant"]
        if args.keep_freed_memory is not None:
            extra.append("--keep-freed-memory" if args.keep_freed_memory else "--no-keep-freed-memory")
        server = ServerProcess(tmp_path / "snapshots", args.threads, tmp_path / "server.log", extra).start()
        try:
            return run(args, server, started, load_at_start)
        finally:
            server.stop()


def run(args: argparse.Namespace, server: ServerProcess, started: float, load_at_start: tuple) -> int:
    import grpc
    import google.protobuf
    import numpy as np
    import torch
    import transformers

    from logit_client import LogitClient, SequenceInput, TokenSource
    from logit_client.channels import channel_options
    from logit_client.requests import build_score_request, parse_score_response
    from logit_service.backends.torch_backend import ScoreItem, TorchBackend
    from logit_service.config import ServerConfig
    from logit_service.demo.tiny_model import build_tiny_model
    from logit_service.snapshots.loader import load_verified_config, load_verified_weights
    from logit_service.snapshots.manifest import read_manifest
    from logit_service.v1 import logit_service_pb2_grpc as pb_grpc

    torch.set_num_threads(args.threads)
    if args.keep_freed_memory is not False:
        # (a) and (b) get the allocator setting the server runs with, so the comparison is of the paths,
        # not of two processes' allocation histories (which decide whether freed memory is reused).
        from logit_service.server.malloc_tuning import keep_freed_memory

        keep_freed_memory()
    B, L = args.batch, args.seq_len
    scored = B * (L - 1)
    model = build_tiny_model(seed=args.seed, vocab_size=args.vocab_size, hidden_size=args.hidden_size, layers=args.layers,
                             max_positions=max(2048, L))
    n_params = sum(p.numel() for p in model.parameters())
    tokens = np.random.default_rng(args.seed).integers(0, args.vocab_size, size=(B, L)).astype(np.int64)

    client = LogitClient(server.address, timeout_s=600)
    snapshot_dir = server.log_path.parent / "snapshots"
    published = client.publish(0, model, snapshot_dir)

    # (b) gets the very bytes the server loads, and the server's own backend settings. The record names
    # the snapshot relative to the server's snapshot directory.
    snapshot = snapshot_dir / published.snapshot_path
    manifest = read_manifest(snapshot)
    overrides = {} if args.batch_invariant is None else {"batch_invariant": args.batch_invariant}
    cfg = ServerConfig(snapshot_dir=snapshot.parent, **overrides)
    backend = TorchBackend(dtype=cfg.dtype, device=cfg.device, attn_implementation=cfg.attn_implementation,
                           max_batch_tokens=cfg.max_batch_tokens, logprob_chunk_tokens=cfg.logprob_chunk_tokens,
                           batch_invariant=cfg.batch_invariant)
    backend.ensure_model(load_verified_config(snapshot, manifest))
    backend.load("0", published.digest, load_verified_weights(snapshot, manifest))

    def direct() -> np.ndarray:
        ids = torch.from_numpy(tokens)
        with torch.no_grad():
            logits = model(input_ids=ids, use_cache=False).logits
            logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        return logprobs.numpy()

    def in_process_backend() -> np.ndarray:
        positions = np.arange(1, L)
        return np.stack(backend.score([ScoreItem(tokens[i], positions) for i in range(B)]))

    compute_seconds: list[float] = []

    def service() -> np.ndarray:
        result = client.score([SequenceInput(tokens[i], spans=((0, 1, L),)) for i in range(B)])
        compute_seconds.append(result.compute_seconds)
        for seq in result.sequences:
            assert (seq.sources[1:] == TokenSource.EXACT).all() and (seq.served_versions[1:] == 0).all()
        return np.stack([seq.logprobs[1:] for seq in result.sequences])

    modes = {"direct": direct, "backend": in_process_backend, "service": service}
    labels = {
        "direct": "(a) direct forward, in-process",
        "backend": "(b) TorchBackend.score, in-process",
        "service": "(c) service: client -> gRPC -> server process",
    }

    # Warm-up (the first service call builds the server's model and loads the version), then the check.
    outputs = {}
    for _ in range(args.warmup):
        for name, fn in modes.items():
            outputs[name] = fn()
    compute_seconds.clear()
    c_vs_b_equal = bool(np.array_equal(outputs["service"], outputs["backend"]))
    c_vs_b_max = float(np.abs(outputs["service"] - outputs["backend"]).max())
    c_vs_a_max = float(np.abs(outputs["service"] - outputs["direct"]).max())
    b_vs_a_max = float(np.abs(outputs["backend"] - outputs["direct"]).max())
    exact_ok = c_vs_b_equal and c_vs_a_max <= EXACT_ATOL
    print(f"exactness: (c) == (b) bit for bit: {c_vs_b_equal} (max |diff| {c_vs_b_max:.3e}); "
          f"max |(c) - (a)| = {c_vs_a_max:.3e} (tolerance {EXACT_ATOL:g}); max |(b) - (a)| = {b_vs_a_max:.3e} "
          f"-> {'OK' if exact_ok else 'MISMATCH'}", flush=True)

    # Timed rounds: each round runs all three modes, the order rotating so none always goes first.
    names = list(modes)
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(args.reps):
        for name in names[rep % 3:] + names[: rep % 3]:
            t0 = time.perf_counter()
            modes[name]()
            times[name].append(time.perf_counter() - t0)

    # Where (c)'s extra time goes: client-side encoding and decoding timed alone (no server involved),
    # and payload sizes from one raw call.
    sequences = [SequenceInput(tokens[i], spans=((0, 1, L),)) for i in range(B)]
    request = build_score_request(sequences)
    with grpc.insecure_channel(server.address, options=channel_options(256 << 20)) as channel:
        response = pb_grpc.LogitServiceStub(channel).Score(request, timeout=600)
    n_micro = 50
    t0 = time.perf_counter()
    for _ in range(n_micro):
        build_score_request(sequences)
    build_s = (time.perf_counter() - t0) / n_micro
    t0 = time.perf_counter()
    for _ in range(n_micro):
        parse_score_response(request, response)
    parse_s = (time.perf_counter() - t0) / n_micro
    # The floor of any call: a metadata RPC with no model work (same channel, one executor hop like Score).
    empty_rpc = []
    for _ in range(n_micro):
        t0 = time.perf_counter()
        client.get_version(0)
        empty_rpc.append(time.perf_counter() - t0)
    client.close()

    results = {name: stats(times[name], scored) for name in names}
    med = {name: results[name]["median_s"] for name in names}
    server_compute = float(np.median(compute_seconds))
    ratios = {
        "service_vs_direct": med["direct"] / med["service"],
        "service_vs_backend": med["backend"] / med["service"],
        "backend_vs_direct": med["direct"] / med["backend"],
    }
    # Two estimates that resist other work on a shared machine: the median over rounds of each round's
    # own ratio (the three modes of a round ran back to back), and best of N.
    pairs = (("service_vs_direct", "service", "direct"), ("service_vs_backend", "service", "backend"),
             ("backend_vs_direct", "backend", "direct"))
    ratios_paired = {key: float(np.median(np.asarray(times[den]) / np.asarray(times[num]))) for key, num, den in pairs}
    ratios_best = {key: results[den]["min_s"] / results[num]["min_s"] for key, num, den in pairs}
    breakdown = {
        "service_total_median_s": med["service"],
        "server_engine_median_s": server_compute,
        "client_build_request_s": build_s,
        "client_parse_response_s": parse_s,
        # Per call: client wall minus the engine time the server reported for that very call.
        "outside_engine_per_call_median_s": float(np.median(np.asarray(times["service"]) - np.asarray(compute_seconds))),
        "empty_rpc_median_s": float(np.median(empty_rpc)),
        "engine_minus_backend_s": server_compute - med["backend"],
        "request_bytes": request.ByteSize(),
        "response_bytes": response.ByteSize(),
    }

    print()
    print(f"model: Qwen2 vocab {args.vocab_size}, hidden {args.hidden_size}, {args.layers} layers "
          f"({n_params / 1e6:.2f} M params, float32); batch {B} x {L} tokens, {scored} positions scored under one version")
    print(f"service settings (server and (b)): batch_invariant={cfg.batch_invariant} "
          f"({'fixed-shape tiles' if cfg.batch_invariant else 'sequences batched by length'}), "
          f"max_batch_tokens={cfg.max_batch_tokens}, logprob_chunk_tokens={cfg.logprob_chunk_tokens}, dtype={cfg.dtype}")
    print(f"torch threads: benchmark process {torch.get_num_threads()}, server process main "
          f"{server.torch_threads.get('main')} / worker {server.torch_threads.get('worker')}; "
          f"{os.cpu_count()} CPUs; {args.reps} timed rounds after {args.warmup} warm-up")
    print()
    print(f"{'mode':<48} {'median ms':>10} {'p90 ms':>10} {'min ms':>10} {'tokens/s':>10}")
    for name in names:
        r = results[name]
        print(f"{labels[name]:<48} {r['median_s'] * 1e3:>10.1f} {r['p90_s'] * 1e3:>10.1f} {r['min_s'] * 1e3:>10.1f} {r['tokens_per_s']:>10.0f}")
    print()
    print(f"{'tokens/s ratio':<48} {'of medians':>10} {'per round':>10} {'best':>10}")
    for key, text in (("service_vs_direct", "(c)/(a) service / direct forward"),
                      ("service_vs_backend", "(c)/(b) service / in-process backend"),
                      ("backend_vs_direct", "(b)/(a) backend / direct forward")):
        print(f"{text:<48} {ratios[key]:>10.3f} {ratios_paired[key]:>10.3f} {ratios_best[key]:>10.3f}")
    print("(goal: (c)/(b) >= 0.95)")
    print()
    print("(c) broken down (medians):")
    print(f"  server engine (ScoringEngine.score, as reported)  {server_compute * 1e3:8.1f} ms   "
          f"(in-process backend (b): {med['backend'] * 1e3:.1f} ms)")
    print(f"  client: build request                           {build_s * 1e3:8.2f} ms   ({breakdown['request_bytes']} B)")
    print(f"  client: parse response                          {parse_s * 1e3:8.2f} ms   ({breakdown['response_bytes']} B)")
    print(f"  outside the engine, per call (wall - engine)    {breakdown['outside_engine_per_call_median_s'] * 1e3:8.1f} ms   "
          f"(gRPC, proto conversion both ends, thread hops)")
    print(f"  an empty RPC (GetVersion) round trip            {breakdown['empty_rpc_median_s'] * 1e3:8.2f} ms")

    report = {
        "benchmark": "service_overhead",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([".venv/bin/python", "benchmarks/service_overhead.py", *args.argv]),
        "model": {"type": "qwen2", "vocab_size": args.vocab_size, "hidden_size": args.hidden_size,
                  "intermediate_size": 2 * args.hidden_size, "layers": args.layers, "parameters": n_params,
                  "dtype": "float32"},
        "batch": {"sequences": B, "seq_len": L, "positions_scored": scored, "policy_versions": 1},
        "service_settings": {"batch_invariant": cfg.batch_invariant, "keep_freed_memory": args.keep_freed_memory is not False, "max_batch_tokens": cfg.max_batch_tokens,
                             "logprob_chunk_tokens": cfg.logprob_chunk_tokens, "dtype": cfg.dtype,
                             "attn_implementation": cfg.attn_implementation},
        "reps": args.reps,
        "warmup": args.warmup,
        "modes": {name: {"label": labels[name], **results[name]} for name in names},
        "ratios_tokens_per_s": ratios,
        "ratios_tokens_per_s_median_of_per_round": ratios_paired,
        "ratios_tokens_per_s_best_of_n": ratios_best,
        "breakdown": breakdown,
        "exactness": {"service_equals_backend_bitwise": c_vs_b_equal, "max_abs_service_minus_backend": c_vs_b_max,
                      "max_abs_service_minus_direct": c_vs_a_max, "max_abs_backend_minus_direct": b_vs_a_max,
                      "tolerance_vs_direct": EXACT_ATOL, "ok": exact_ok},
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "cpu_model": cpu_model(),
            "load_average_at_start": list(load_at_start),
            "load_average_at_end": list(os.getloadavg()),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "grpcio": grpc.__version__,
            "protobuf": google.protobuf.__version__,
            "torch_threads": {"benchmark_process": torch.get_num_threads(), "server_process": server.torch_threads},
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        },
        "wall_s": time.perf_counter() - started,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output} ({report['wall_s']:.0f} s in all)")
    if not exact_ok:
        print("FAIL: the service's answers do not match the in-process ones", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

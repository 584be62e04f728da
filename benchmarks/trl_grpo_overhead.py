"""TRL GRPO training through the service vs stock TRL computing its old log-probs itself, side by side.

Both trainers run the example's configuration (examples/trl_grpo.py: tiny Qwen2, character tokenizer,
`steps_per_generation=2`, `num_iterations=2`, so stock TRL runs its own no-grad old-log-prob forward
once per generation round). The service arm publishes every optimiser step (snapshot written and
registered) and scores each round through gRPC against `logit-service serve` in a separate process.
Runs alternate (stock, service, stock, ...) so load on the machine hits both alike. The figure is the
ratio of median seconds per optimiser step, service ÷ stock, with the service arm's time spent
publishing and scoring. Each service run has a fresh server (every run publishes versions 0..steps), whose
first publish builds and probes its model: that one-time cost is reported apart and left out of the
steady-state ratio.

    .venv/bin/python benchmarks/trl_grpo_overhead.py            # results: benchmarks/results/trl_grpo_overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "clients")]

from service_overhead import ServerProcess, cpu_model  # noqa: E402  (the benchmark's own launcher)

DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "trl_grpo_overhead.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=8, help="optimiser steps per run (a round is 4 steps)")
    p.add_argument("--reps", type=int, default=3, help="runs of each arm, alternating")
    p.add_argument("--warmup", type=int, default=1, help="untimed one-step runs of each arm first")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads, here and in the server")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    return p.parse_args(argv)


def timed_service_trainer():
    """ServiceGRPOTrainer that adds up the seconds it spends publishing and scoring."""
    from logit_client.integrations.trl_grpo import PublishEveryVersion, ServiceGRPOTrainer

    class TimedPublisher(PublishEveryVersion):
        seconds_by_version: dict[int, float] = {}

        def _publish(self, policy_version: int) -> None:
            start = time.perf_counter()
            super()._publish(policy_version)
            TimedPublisher.seconds_by_version[policy_version] = time.perf_counter() - start

    class TimedTrainer(ServiceGRPOTrainer):
        score_seconds = 0.0

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.callback_handler.remove_callback(self.publisher)
            self.publisher = TimedPublisher(self)
            self.add_callback(self.publisher)

        def _serve_old_logps(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return super()._serve_old_logps(*args, **kwargs)
            finally:
                TimedTrainer.score_seconds += time.perf_counter() - start

    return TimedTrainer, TimedPublisher


def run_once(arm: str, run_dir: Path, steps: int, threads: int) -> dict:
    """One training run of `arm`; the service arm gets a fresh server on its own snapshot directory (every run
    publishes versions 0..steps), started and stopped outside the timed region."""
    from trl import GRPOTrainer

    from examples.trl_grpo import make_trainer
    from logit_client import LogitClient

    run_dir.mkdir(parents=True)
    if arm == "stock":
        def stock(*args, logit_client, snapshot_dir, score_timeout_s, publish_timeout_s, **kwargs):
            return GRPOTrainer(*args, **kwargs)  # the same configuration, TRL's own old log-probs

        trainer = make_trainer(None, run_dir / "unused", run_dir / "out", max_steps=steps, trainer_class=stock)
        start = time.perf_counter()
        trainer.train()
        return {"seconds": time.perf_counter() - start}
    server = ServerProcess(run_dir / "snapshots", threads, run_dir / "server.log", ["--retention-window", "16"]).start()
    try:
        with LogitClient(server.address, timeout_s=120) as client:
            trainer_class, publisher_class = timed_service_trainer()
            trainer = make_trainer(client, run_dir / "snapshots", run_dir / "out", max_steps=steps,
                                   trainer_class=trainer_class)  # fmt: skip
            start = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - start
    finally:
        server.stop()
    by_version = publisher_class.seconds_by_version
    # The first publish to a fresh server also builds and probes its model, once per server lifetime: a
    # long-lived service pays it once, not per run, so the steady state leaves it out.
    return {"seconds": seconds, "first_publish_s": by_version[0], "seconds_steady": seconds - by_version[0],
            "publish_s_after_first": sum(t for v, t in by_version.items() if v > 0),
            "score_s": trainer_class.score_seconds}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    import numpy as np
    import torch
    import transformers
    import trl

    torch.set_num_threads(args.threads)
    load_at_start = os.getloadavg()
    runs: dict[str, list[dict]] = {"stock": [], "service": []}
    with tempfile.TemporaryDirectory(prefix="trl-bench-") as tmp:
        tmp_path = Path(tmp)
        for i in range(args.warmup):  # untimed: imports, first model builds
            for arm in ("stock", "service"):
                run_once(arm, tmp_path / f"warm{i}-{arm}", 1, args.threads)
        for rep in range(args.reps):
            for arm in ("stock", "service") if rep % 2 == 0 else ("service", "stock"):
                runs[arm].append(run_once(arm, tmp_path / f"{arm}-{rep}", args.steps, args.threads))
                print(f"{arm:8s} run {rep}: {runs[arm][-1]}", flush=True)

    per_step = {"stock": float(np.median([r["seconds"] for r in runs["stock"]])) / args.steps,
                "service": float(np.median([r["seconds_steady"] for r in runs["service"]])) / args.steps,
                "service_with_first_publish": float(np.median([r["seconds"] for r in runs["service"]])) / args.steps}
    results = {
        "config": {"steps": args.steps, "reps": args.reps, "warmup": args.warmup, "threads": args.threads,
                   "trainer": "examples/trl_grpo.py make_trainer (steps_per_generation=2, num_iterations=2)"},
        "runs": runs,
        "median_s_per_step": per_step,
        "ratio_service_over_stock": per_step["service"] / per_step["stock"],
        "first_publish_s": float(np.median([r["first_publish_s"] for r in runs["service"]])),
        "service_publish_s_per_step": float(np.median([r["publish_s_after_first"] for r in runs["service"]])) / args.steps,
        "service_score_s_per_round": float(np.median([r["score_s"] for r in runs["service"]])) / max(args.steps // 4, 1),
        "machine": {"cpu_count": os.cpu_count(), "cpu": cpu_model(), "load_at_start": load_at_start,
                    "load_at_end": os.getloadavg(), "torch": torch.__version__,
                    "transformers": transformers.__version__, "trl": trl.__version__},
    }  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    print(f"seconds per optimiser step, median: stock {per_step['stock']:.3f}, service {per_step['service']:.3f} "
          f"(after the first publish, {results['first_publish_s']:.1f} s, which builds the server's model); "
          f"service / stock {results['ratio_service_over_stock']:.2f}; publishing "
          f"{results['service_publish_s_per_step']:.3f} s per step, scoring {results['service_score_s_per_round']:.3f} s "
          f"per round; results in {args.output}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

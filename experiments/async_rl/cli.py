"""`python -m experiments.async_rl run|grid|report`: one cell, a grid of cells in parallel, the write-up."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import ARMS, RunConfig


def _window(text: str) -> tuple[float, float]:
    lo, hi = (float(x) for x in text.split(","))
    return lo, hi


def _arms(text: str) -> list[str]:
    arms = text.split(",")
    for arm in arms:
        if arm not in ARMS:
            raise argparse.ArgumentTypeError(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")
    return arms


def write_result(record: dict, out: Path, name: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, allow_nan=False))
    tmp.replace(path)
    return path


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rollout-engine", choices=["torch", "vllm"], default="torch",
        help="torch: emulated engine (bf16-rounded weights + logit noise); vllm: a real vLLM engine (needs .venv-vllm)",
    )  # fmt: skip
    parser.add_argument("--vllm-dtype", choices=["bfloat16", "float32"], default="bfloat16", help="the vLLM engine's dtype")
    parser.add_argument(
        "--attention-heads", type=int, default=None,
        help="the policy's attention heads (default 4; 2 with --rollout-engine vllm, whose CPU kernels need head size >= 32)",
    )  # fmt: skip


def engine_options(args: argparse.Namespace) -> dict:
    """RunConfig fields of the engine options that were given (none by default, so configs stay as they were)."""
    options = {} if args.attention_heads is None else {"attention_heads": args.attention_heads}
    if args.rollout_engine != "torch":
        options.update(rollout_engine=args.rollout_engine, vllm_dtype=args.vllm_dtype)
    return options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.async_rl")
    sub = parser.add_subparsers(dest="command", required=True)

    one = sub.add_parser("run", help="run one cell and write DIR/<arm>-k<K>-<lo>_<hi>-s<S>.json")
    one.add_argument("--arm", required=True, type=_arms, help=f"one of {', '.join(ARMS)}, or several: a,b,... run in turn (sync among them at k = 0)")
    one.add_argument("--staleness", type=int, required=True, help="k (0 only with --arm sync)")
    one.add_argument("--window", type=_window, default=(0.8, 1.25), help="discrepancy mask window LO,HI")
    one.add_argument("--seed", type=int, default=0)
    one.add_argument("--out", type=Path, required=True)
    one.add_argument("--versions", type=int, default=100)
    one.add_argument("--setting", choices=["default", "aggressive"], default="default")
    one.add_argument("--turns", type=int, choices=[1, 2], default=1)
    one.add_argument("--ewma-beta", type=float, default=None, help="EWMA decay (default: from k)")
    add_engine_arguments(one)

    grid = sub.add_parser("grid", help="run a grid of cells, 2 processes at a time; skips cells already written")
    from .grid import add_grid_arguments

    add_grid_arguments(grid)

    report = sub.add_parser("report", help="plots and tables from the JSON files alone")
    report.add_argument("--results", type=Path, default=Path("experiments/results"))
    report.add_argument("--out", type=Path, default=None, help="where plots and report.md go (default: --results)")

    args = parser.parse_args(argv)
    if args.command == "run":
        from .pipeline import run

        # Several arms run in turn in this process; on the vLLM engine they share one engine start.
        configs = [
            RunConfig(
                arm=arm, staleness=0 if arm == "sync" and len(args.arm) > 1 else args.staleness, window=args.window,
                seed=args.seed, versions=args.versions, setting=args.setting, turns=args.turns,
                ewma_beta=args.ewma_beta, **engine_options(args),
            )
            for arm in args.arm
        ]  # fmt: skip
        records = {}
        for config in configs:
            record = records[config.arm] = run(config)
            path = write_result(record, args.out, config.file_name())
            print(
                f"{path}: auc {record['auc']:.3f} final {record['final_reward']:.3f} masked {record['masked_frac_mean']:.3f} "
                f"clip {record['clip_frac_mean']:.3f} disc {record['disc_abs_mean']:.4f} ewma_err {record['ewma_abs_err_mean']:.4f} "
                f"wall {record['wall_s']:.1f}s",
                flush=True,
            )
        from .grid import exact_disagreement

        disagreement = exact_disagreement(records)  # they must differ only in cost
        if disagreement is not None:
            print(f"error: {disagreement}", file=sys.stderr)
            return 1
        return 0
    if args.command == "grid":
        from .grid import run_grid

        return run_grid(args)
    from .report import make_report

    return make_report(args.results, args.out or args.results)


if __name__ == "__main__":
    sys.exit(main())

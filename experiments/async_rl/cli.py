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


def write_result(record: dict, out: Path, name: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, allow_nan=False))
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.async_rl")
    sub = parser.add_subparsers(dest="command", required=True)

    one = sub.add_parser("run", help="run one cell and write DIR/<arm>-k<K>-<lo>_<hi>-s<S>.json")
    one.add_argument("--arm", required=True, choices=ARMS)
    one.add_argument("--staleness", type=int, required=True, help="k (0 only with --arm sync)")
    one.add_argument("--window", type=_window, default=(0.8, 1.25), help="discrepancy mask window LO,HI")
    one.add_argument("--seed", type=int, default=0)
    one.add_argument("--out", type=Path, required=True)
    one.add_argument("--versions", type=int, default=100)
    one.add_argument("--setting", choices=["default", "aggressive"], default="default")
    one.add_argument("--turns", type=int, choices=[1, 2], default=1)
    one.add_argument("--ewma-beta", type=float, default=None, help="EWMA decay (default: from k)")

    grid = sub.add_parser("grid", help="run a grid of cells, 2 processes at a time; skips cells already written")
    from .grid import add_grid_arguments

    add_grid_arguments(grid)

    report = sub.add_parser("report", help="plots and tables from the JSON files alone")
    report.add_argument("--results", type=Path, default=Path("experiments/results"))
    report.add_argument("--out", type=Path, default=None, help="where plots and report.md go (default: --results)")

    args = parser.parse_args(argv)
    if args.command == "run":
        from .pipeline import run

        config = RunConfig(
            arm=args.arm, staleness=args.staleness, window=args.window, seed=args.seed, versions=args.versions,
            setting=args.setting, turns=args.turns, ewma_beta=args.ewma_beta,
        )  # fmt: skip
        record = run(config)
        path = write_result(record, args.out, config.file_name())
        print(
            f"{path}: auc {record['auc']:.3f} final {record['final_reward']:.3f} masked {record['masked_frac_mean']:.3f} "
            f"clip {record['clip_frac_mean']:.3f} disc {record['disc_abs_mean']:.4f} ewma_err {record['ewma_abs_err_mean']:.4f} "
            f"wall {record['wall_s']:.1f}s"
        )
        return 0
    if args.command == "grid":
        from .grid import run_grid

        return run_grid(args)
    from .report import make_report

    return make_report(args.results, args.out or args.results)


if __name__ == "__main__":
    sys.exit(main())

"""Grids of cells, each run as its own process (`... run ...`), a fixed number at a time.

A cell whose JSON already exists is skipped, so an interrupted grid resumes where it stopped. After the
runs, the three exact strategies of every (k, window, seed) are checked to have produced bit-identical
old log-probs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .config import ARMS, EXACT_ARMS, RunConfig

TIGHT, LOOSE = (0.8, 1.25), (0.5, 2.0)


@dataclass(frozen=True)
class Cell:
    config: RunConfig
    study: str  # sub-directory of the output: default-t1, aggressive-t1, default-t2, beta-0.5, ...

    def path(self, out: Path) -> Path:
        return out / self.study / self.config.file_name()

    def command(self, out: Path) -> list[str]:
        c = self.config
        cmd = [
            sys.executable, "-m", "experiments.async_rl", "run", "--arm", c.arm, "--staleness", str(c.staleness),
            "--window", f"{c.window[0]:g},{c.window[1]:g}", "--seed", str(c.seed), "--out", str(out / self.study),
            "--versions", str(c.versions), "--setting", c.setting, "--turns", str(c.turns),
        ]  # fmt: skip
        if c.ewma_beta is not None:
            cmd += ["--ewma-beta", f"{c.ewma_beta:g}"]
        if c.rollout_engine != "torch":
            cmd += ["--rollout-engine", c.rollout_engine, "--vllm-dtype", c.vllm_dtype]
        if c.attention_heads != 4:
            cmd += ["--attention-heads", str(c.attention_heads)]
        return cmd


def cells_for(
    arms, staleness, windows, seeds, *, versions: int, setting: str = "default", turns: int = 1, study: str | None = None,
    engine: dict | None = None,
) -> list[Cell]:
    """`engine`: the rollout-engine and model fields given (none: the torch engine, 4 heads). Cells that
    differ from those defaults go to their own study: vllm-default-h2-t1 (vLLM bf16, 2 heads),
    vllm-float32-default-h2-t1, default-h2-t1 (the torch engine on the vLLM cells' model)."""
    engine = engine or {}
    if study is None:
        probe = RunConfig(arm="sync", staleness=0, **engine)  # the defaults these options imply
        study = f"{setting}-t{turns}" if probe.attention_heads == 4 else f"{setting}-h{probe.attention_heads}-t{turns}"
        if probe.rollout_engine == "vllm":
            study = f"vllm-{'' if probe.vllm_dtype == 'bfloat16' else probe.vllm_dtype + '-'}{study}"
    cells = []
    for window in windows:
        for seed in seeds:
            if "sync" in arms:
                cells.append(Cell(RunConfig(arm="sync", staleness=0, window=window, seed=seed, versions=versions, setting=setting, turns=turns, **engine), study))
            for k in staleness:
                for arm in arms:
                    if arm != "sync":
                        cells.append(Cell(RunConfig(arm=arm, staleness=k, window=window, seed=seed, versions=versions, setting=setting, turns=turns, **engine), study))
    return cells


def beta_scan(betas, seeds, *, staleness: int, versions: int) -> list[Cell]:
    return [
        Cell(RunConfig(arm="ewma", staleness=staleness, window=TIGHT, seed=s, versions=versions, ewma_beta=b), f"beta-{b:g}")
        for b in betas
        for s in seeds
    ]


def preset(name: str, versions: int) -> list[Cell]:
    if name == "full":  # the grid
        return (
            cells_for(ARMS, (1, 2, 4, 8), (LOOSE, TIGHT), (0, 1, 2), versions=versions)
            + cells_for(ARMS, (1, 2, 4, 8), (TIGHT,), (0, 1, 2), versions=versions, setting="aggressive")
            + cells_for(ARMS, (2, 4), (TIGHT,), (0, 1, 2), versions=versions, turns=2)
            + beta_scan((0.25, 0.5, 0.7, 0.8, 0.9), (0, 1, 2), staleness=4, versions=versions)
        )
    if name == "reduced":  # what fits two shared CPU cores in about an hour; seed 0 of everything first
        return (
            cells_for(ARMS, (1, 4), (TIGHT,), (0,), versions=versions)
            + beta_scan((0.5, 0.8, 0.9), (0,), staleness=4, versions=versions)
            + cells_for(ARMS, (1, 4), (TIGHT,), (1,), versions=versions)
        )
    if name == "reduced-extra":  # the other settings, one seed each
        return (
            cells_for(ARMS, (4,), (LOOSE,), (0,), versions=versions)
            + cells_for(ARMS, (4,), (TIGHT,), (0,), versions=versions, setting="aggressive")
            + cells_for(ARMS, (2,), (TIGHT,), (0,), versions=versions, turns=2)
        )
    raise ValueError(f"unknown preset {name!r}")


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _utc_time(text: str) -> float:
    """HH:MM (UTC) as a time.time() value: the nearest such time, so a grid started just after it (the
    next grid of a chain) starts nothing, and one started late in the evening for 01:00 runs until then."""
    hours, minutes = (int(x) for x in text.split(":"))
    now = datetime.datetime.now(datetime.UTC)
    at = now.replace(hour=hours, minute=minutes, second=0, microsecond=0)
    if (now - at).total_seconds() > 12 * 3600:
        at += datetime.timedelta(days=1)
    elif (at - now).total_seconds() > 12 * 3600:
        at -= datetime.timedelta(days=1)
    return at.timestamp()


def add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=["full", "reduced", "reduced-extra"], default=None)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--staleness", type=_ints, default=[1, 2, 4, 8])
    parser.add_argument("--windows", default="0.5,2;0.8,1.25", help="semicolon-separated LO,HI windows")
    parser.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    parser.add_argument("--setting", choices=["default", "aggressive"], default="default")
    parser.add_argument("--turns", type=int, choices=[1, 2], default=1)
    parser.add_argument("--ewma-betas", type=_floats, default=[], help="add an EWMA β scan at k=4, tight window")
    parser.add_argument("--versions", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    parser.add_argument("--dry-run", action="store_true", help="list the cells and exit")
    parser.add_argument(
        "--start-before", type=_utc_time, default=None, metavar="HH:MM",
        help="start no cell after this UTC time (cells running then finish; the rest are listed as not run)",
    )  # fmt: skip
    parser.add_argument(
        "--study", default=None,
        help="the sub-directory the cells go to (default: from the setting, turns and engine), e.g. to keep "
        "cells measured on a quiet machine apart from the same cells run beside other work",
    )  # fmt: skip
    from .cli import add_engine_arguments

    add_engine_arguments(parser)


def run_grid(args: argparse.Namespace) -> int:
    if args.rollout_engine != "torch" and (args.preset or args.ewma_betas):
        raise SystemExit("--preset and --ewma-betas are torch-engine grids; give vLLM cells by --arms/--staleness/...")
    if args.preset:
        cells = preset(args.preset, args.versions)
    else:
        windows = [tuple(_floats(w)) for w in args.windows.split(";")]
        from .cli import engine_options

        cells = cells_for(
            args.arms.split(","), args.staleness, windows, args.seeds, versions=args.versions, setting=args.setting,
            turns=args.turns, study=args.study, engine=engine_options(args),
        )  # fmt: skip
        cells += beta_scan(args.ewma_betas, args.seeds, staleness=4, versions=args.versions)
    todo = [c for c in cells if not _written(c, args.out)]
    print(f"{len(cells)} cells, {len(cells) - len(todo)} already written, {len(todo)} to run with {args.jobs} processes")
    if args.dry_run:
        for c in todo:
            print(" ".join(c.command(args.out)))
        return 0
    started = time.perf_counter()
    failures, not_started = [], []

    def one(cell: Cell) -> None:
        if args.start_before is not None and time.time() >= args.start_before:
            not_started.append(cell)
            return
        t0 = time.perf_counter()
        done = subprocess.run(cell.command(args.out), capture_output=True, text=True)
        status = "ok" if done.returncode == 0 else f"FAILED ({done.returncode})"
        print(f"[{time.perf_counter() - started:7.1f}s] {cell.study}/{cell.config.file_name()} {status} in {time.perf_counter() - t0:.1f}s", flush=True)
        if done.returncode != 0:
            failures.append(cell)
            print(done.stderr[-3000:], file=sys.stderr, flush=True)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(one, todo))
    print(f"grid done in {time.perf_counter() - started:.1f}s; {len(failures)} failed, {len(not_started)} not started")
    for cell in not_started:
        print(f"not started (--start-before): {cell.study}/{cell.config.file_name()}")
    mismatches = check_exact_identity(args.out)
    return 1 if failures or mismatches else 0


def _written(cell: Cell, out: Path) -> bool:
    """A cell is done when its file exists with exactly this cell's arguments (e.g. the same --versions);
    a file from other arguments is rerun and replaced."""
    path = cell.path(out)
    if not path.exists():
        return False
    return json.loads(path.read_text()).get("args") == cell.config.record_args()


def check_exact_identity(results: Path) -> list[str]:
    """Names the (study, k, window, seed) cells whose three exact strategies disagree in any bit."""
    digests: dict[tuple, dict[str, str]] = {}
    for path in sorted(results.rglob("*.json")):
        record = json.loads(path.read_text())
        a = record.get("args", {})
        if a.get("arm") in EXACT_ARMS:
            key = (path.parent.name, a["staleness"], tuple(a["window"]), a["seed"])
            digests.setdefault(key, {})[a["arm"]] = record["old_logprobs_sha256"]
    mismatches = [f"{key}: {d}" for key, d in digests.items() if len(set(d.values())) > 1]
    complete = sum(len(d) == len(EXACT_ARMS) for d in digests.values())
    print(f"exact strategies bit-identical in {complete - len([1 for d in digests.values() if len(d) == 3 and len(set(d.values())) > 1])} of {complete} complete cells")
    for m in mismatches:
        print(f"MISMATCH {m}", file=sys.stderr)
    return mismatches


def exact_disagreement(records: dict[str, dict]) -> str | None:
    """For the exact strategies of one cell run together: the first version whose old log-probs differ
    in any bit between them, described; None when they agree in every version."""
    exact = {arm: r for arm, r in records.items() if arm in EXACT_ARMS}
    if len(exact) < 2:
        return None
    per_version = {arm: [row["old_logprobs_sha256"] for row in r["per_version"]] for arm, r in exact.items()}
    for n, digests in enumerate(zip(*per_version.values())):
        if len(set(digests)) > 1:
            by_arm = ", ".join(f"{arm} {d[:12]}" for arm, d in zip(per_version, digests))
            return f"version {n}: the exact strategies' old log-probs differ ({by_arm})"
    return None

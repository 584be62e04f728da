"""What the demo prints: one line per step as it happens, the two summary tables, and the closing sentence.

Tables are drawn by rich, which sizes columns and stays plain text when the output is not a terminal.
"""

from __future__ import annotations

import sys

VIEWS = ("exact", "ewma", "recompute")


def _console():
    from rich.console import Console

    # Not a terminal (a log, a test's captured output): wide enough that no header wraps, no colour codes.
    width = None if sys.stdout.isatty() else 160
    return Console(file=sys.stdout, width=width, highlight=False)


def print_step(record, published_next: int) -> None:
    versions = ",".join(map(str, record.versions_seen))
    print(
        f"step {record.step}: trainer at v{record.trainer_version}; {record.sequences} rollouts from v{versions} "
        f"({record.partial} span several versions, staleness ≤ {record.staleness_max}); "
        f"service scored {record.tokens} tokens at {record.tokens_per_s:,.0f} tok/s, "
        f"max |err| vs direct forward {record.max_error:.1e}; trained, published v{published_next}",
        flush=True,
    )


def _table(title: str, headers: list[str], rows: list[list[str]]):
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for header in headers:
        table.add_column(header, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table


def print_service_table(records) -> None:
    headers = ["step", "trainer v", "seqs", "tokens", "versions in batch", "partial", "staleness mean/max", "max |err|", "tok/s", "reward"]
    rows = [
        [
            str(r.step), str(r.trainer_version), str(r.sequences), str(r.tokens),
            ",".join(map(str, r.versions_seen)), f"{r.partial}/{r.sequences}",
            f"{r.staleness_mean:.2f}/{r.staleness_max}", f"{r.max_error:.1e}", f"{r.tokens_per_s:,.0f}", f"{r.reward:.3f}",
        ]
        for r in records
    ]
    title = "Exact old log-probs from the service, checked against direct forwards with each version's saved weights"
    console = _console()
    console.print()
    console.print(_table(title, headers, rows))


def print_loss_table(records) -> None:
    headers = ["step"] + [f"{n} {m}" for n in VIEWS for m in ("clip", "mask", "kl")]
    rows = []
    for r in records:
        row = [str(r.step)]
        for n in VIEWS:
            m = r.views[n]
            row += [f"{m['loss/clipfrac']:.3f}", f"{m['discrepancy/masked_frac']:.3f}", f"{m['discrepancy/kl']:.1e}"]
        rows.append(row)
    title = 'What the decoupled PPO loss sees under each choice of "old" log-probs'
    console = _console()
    console.print()
    console.print(_table(title, headers, rows))
    print(
        "clip = PPO-clipped fraction, mask = discrepancy-masked fraction, kl = discrepancy KL.\n"
        "exact: π_θv from the service (discrepancy term = engine noise only; PPO clip sees real staleness).\n"
        "ewma: the bias-corrected weight EWMA stands in for π_θv.  recompute: peers' choice, π_θk at the current\n"
        "weights: the ratio starts at 1, nothing is clipped, and the discrepancy mask fires on policy drift instead."
    )


def mean_metric(records, view: str, metric: str) -> float:
    return sum(float(r.views[view][metric]) for r in records) / len(records)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def conclusion(records, tolerance: float) -> str:
    """One sentence on what this run showed, every number in it taken from the run."""
    worst = max(r.max_error for r in records)
    tokens = sum(r.tokens for r in records)
    partial = sum(r.partial for r in records)
    sequences = sum(r.sequences for r in records)
    stalest = max(r.staleness_max for r in records)
    verdict = "matched" if worst <= tolerance else "did NOT match"
    clip = {v: mean_metric(records, v, "loss/clipfrac") for v in VIEWS}
    mask = {v: mean_metric(records, v, "discrepancy/masked_frac") for v in VIEWS}
    return (
        f"Result: over {_count(len(records), 'step')} the service's old log-probs {verdict} direct forwards "
        f"(max |err| {worst:.1e}, tolerance {tolerance:.0e}) on {tokens} tokens up to {_count(stalest, 'version')} stale, "
        f"{partial} of {sequences} responses spanning several versions; the loss clipped {clip['exact']:.1%} "
        f"and masked {mask['exact']:.1%} of tokens with them, against {clip['recompute']:.1%} clipped and "
        f"{mask['recompute']:.1%} masked with log-probs recomputed at the current weights."
    )

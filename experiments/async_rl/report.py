"""Every plot and table of the write-up, from the JSON files alone (nothing is rerun).

Writes PNGs and `report.md` (the tables, in markdown) into the output directory.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from .config import ARMS, EXACT_ARMS
from .grid import check_exact_identity

COLORS = {
    "sync": "black", "recompute": "tab:red", "bypass": "tab:orange", "loglinear": "tab:brown",
    "exact-snapshot": "tab:blue", "exact-follower": "tab:cyan", "exact-barrier": "tab:purple",
    "ewma": "tab:green", "adaptive": "tab:olive",
}  # fmt: skip
COST_ARMS = ("recompute", "exact-snapshot", "exact-follower", "exact-barrier", "ewma", "adaptive")


def load(results: Path) -> list[dict]:
    records = []
    for path in sorted(results.rglob("*.json")):
        record = json.loads(path.read_text())
        if "args" in record and "per_version" in record:
            record["study"] = path.parent.name
            records.append(record)
    return records


def _ms(values) -> str:
    values = np.asarray(values, dtype=float)
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def _group(records, *keys):
    groups = defaultdict(list)
    for r in records:
        groups[tuple(_key(r, k) for k in keys)].append(r)
    return groups


def _key(record: dict, key: str):
    if key == "study":
        return record["study"]
    if key == "window":
        return tuple(record["args"]["window"])
    return record["args"][key]


def _emulated(record: dict) -> bool:
    """Run on the torch (emulated) rollout engine; records from before the option hold no such field."""
    return record["args"].get("rollout_engine", "torch") == "torch"


def _beta_scan_model(record: dict) -> bool:
    """The emulated engine on the 4-head model, which the β scan was run on."""
    return _emulated(record) and record["args"].get("attention_heads", 4) == 4


def _arm_order(arm: str) -> int:
    return ARMS.index(arm)


def headline_table(records: list[dict]) -> str:
    lines = [
        "| study | window | k | arm | seeds | auc | final reward | masked frac | clip frac | disc \\|Δ\\| | anchor \\|Δ\\| | EWMA err | exact frac |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    groups = _group(records, "study", "window", "staleness", "arm")
    for (study, window, k, arm) in sorted(groups, key=lambda g: (g[0], g[1], g[2], _arm_order(g[3]))):
        rs = groups[(study, window, k, arm)]
        lines.append(
            f"| {study} | {window[0]:g}–{window[1]:g} | {k} | {arm} | {len(rs)} | "
            + " | ".join(
                _ms([r[f] for r in rs])
                for f in ("auc", "final_reward", "masked_frac_mean", "clip_frac_mean", "disc_abs_mean", "anchor_disc_abs_mean", "ewma_abs_err_mean", "exact_frac")
            )
            + " |"
        )
    return "\n".join(lines)


def cost_table(records: list[dict]) -> str:
    lines = [
        "| study | k | strategy | runs | trainer wait / version (ms) | rollout stall / switch (ms) | segment submit / version (ms) | retention window | extra snapshot bytes held | tokens scored / s | exact max \\|err\\| | pipeline s / version |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    groups = _group([r for r in records if r["args"]["arm"] in COST_ARMS], "study", "staleness", "arm")
    for (study, k, arm) in sorted(groups, key=lambda g: (g[0], g[1], _arm_order(g[2]))):
        rs = groups[(study, k, arm)]
        s = [r["system"] for r in rs]
        lines.append(
            f"| {study} | {k} | {arm}{' (in-trainer)' if arm == 'recompute' else ''} | {len(rs)} | "
            f"{1000 * np.mean([x['old_wait_s_per_version'] for x in s]):.1f} | "
            f"{1000 * np.mean([x['rollout_stall_s_per_switch'] for x in s]):.1f} | "
            f"{1000 * np.mean([x['submit_s_per_version'] for x in s]):.1f} | "
            f"{rs[0]['effective']['retention_window']} | "
            f"{int(np.mean([x['extra_snapshot_bytes_held'] for x in s])):,} | "
            f"{np.mean([x['tokens_scored_per_s'] for x in s]):.0f} | "
            f"{_max_err(s)} | "
            f"{np.mean([x['version_s'] for x in s]):.2f} |"
        )
    return "\n".join(lines)


def _max_err(systems) -> str:
    errors = [x["exact_max_err"] for x in systems if x["exact_max_err"] is not None]
    return f"{max(errors):.1e}" if errors else "—"


def follower_vs_recompute(records: list[dict]) -> str:
    """The goal "trainer wait with the dedicated old-logit model ≤ 5% of the in-trainer recompute"."""
    waits = _group(records, "study", "staleness", "window", "seed", "arm")
    lines = ["| study | k | follower wait / recompute time (mean over seeds) |", "| --- | --- | --- |"]
    ratios = defaultdict(list)
    for (study, k, window, seed, arm), rs in waits.items():
        if arm == "exact-follower" and (study, k, window, seed, "recompute") in waits:
            rec = waits[(study, k, window, seed, "recompute")][0]["system"]["old_wait_s_per_version"]
            ratios[(study, k)].append(rs[0]["system"]["old_wait_s_per_version"] / rec)
    for (study, k) in sorted(ratios):
        lines.append(f"| {study} | {k} | {np.mean(ratios[(study, k)]):.2f} |")
    return "\n".join(lines)


FIXED_ARMS = ("recompute", "bypass", "loglinear", "exact-snapshot", "ewma")
"""The fixed arms the adaptive route is measured against (the exact strategies learn identically; sync is k = 0)."""


def _signed(values) -> str:
    return "/".join(f"{v:+.3f}" for v in values)


def paired_table(records: list[dict]) -> str:
    """Paired `auc` differences per seed (same study, window, k and seed): exact minus each other arm,
    adaptive minus the best fixed arm of its seed, and in how many seeds exact ≥ EWMA > recompute holds."""
    cells = _group([r for r in records if not r["study"].startswith("beta-")], "study", "window", "staleness", "seed")
    lines = [
        (
            "| study | window | k | seeds | exact − recompute | exact − EWMA | exact − loglinear | exact − bypass "
            "| adaptive − best fixed (arm) | exact ≥ EWMA > recompute |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = defaultdict(dict)  # (study, window, k) -> seed -> arm -> auc
    for (study, window, k, seed), rs in cells.items():
        arms = {r["args"]["arm"]: r["auc"] for r in rs}
        exact = next((a for a in EXACT_ARMS if a in arms), None)  # bit-identical (checked), so any one
        if exact is not None:
            arms["exact-snapshot"] = arms[exact]
        rows[(study, window, k)][seed] = arms
    for (study, window, k) in sorted(rows):
        by_seed = {seed: arms for seed, arms in sorted(rows[(study, window, k)].items()) if "exact-snapshot" in arms}
        if not by_seed:
            continue

        def minus(arm, by_seed=by_seed):
            pairs = [arms["exact-snapshot"] - arms[arm] for arms in by_seed.values() if arm in arms]
            return _signed(pairs) if len(pairs) == len(by_seed) else "—"

        adaptive = []
        for arms in by_seed.values():
            fixed = {a: arms[a] for a in FIXED_ARMS if a in arms}
            if "adaptive" in arms and len(fixed) == len(FIXED_ARMS):
                best = max(fixed, key=fixed.get)
                adaptive.append(f"{arms['adaptive'] - fixed[best]:+.3f} ({best.removeprefix('exact-')})")
        ordered = [
            arms["exact-snapshot"] >= arms["ewma"] > arms["recompute"]
            for arms in by_seed.values() if "ewma" in arms and "recompute" in arms
        ]  # fmt: skip
        lines.append(
            f"| {study} | {window[0]:g}–{window[1]:g} | {k} | {'/'.join(str(s) for s in by_seed)} | {minus('recompute')} | "
            f"{minus('ewma')} | {minus('loglinear')} | {minus('bypass')} | "
            f"{'/'.join(adaptive) if len(adaptive) == len(by_seed) else '—'} | "
            f"{f'{sum(ordered)} of {len(ordered)}' if ordered else '—'} |"
        )
    return "\n".join(lines)


def beta_table(records: list[dict]) -> str:
    rs = [r for r in records if r["args"]["arm"] == "ewma" and _beta_scan_model(r)]
    groups = _group(rs, "study", "staleness")
    lines = ["| study | k | β | seeds | EWMA err | auc | masked frac | clip frac |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (study, k) in sorted(groups, key=lambda g: (g[1], g[0])):
        g = groups[(study, k)]
        if tuple(g[0]["args"]["window"]) != (0.8, 1.25) or g[0]["args"]["setting"] != "default" or g[0]["args"]["turns"] != 1:
            continue
        beta = g[0]["effective"]["ewma_beta"]
        lines.append(
            f"| {study} | {k} | {beta:.3f} | {len(g)} | {_ms([r['ewma_abs_err_mean'] for r in g])} | "
            f"{_ms([r['auc'] for r in g])} | {_ms([r['masked_frac_mean'] for r in g])} | {_ms([r['clip_frac_mean'] for r in g])} |"
        )
    return "\n".join(lines)


def _first_versions(record: dict, n: int) -> dict:
    """A run's figures over its first n versions: what `--versions n` gives, the loop being deterministic."""
    rows = record["per_version"][:n]

    def mean(key):
        return float(np.mean([r[key] for r in rows if r[key] is not None]))

    return {
        "disc": mean("disc_abs"), "masked": mean("masked_frac"), "clip": mean("clip_frac"), "auc": mean("eval_reward"),
        "final": rows[-1]["eval_reward"], "rollout": mean("rollout_s"),
    }  # fmt: skip


_ENGINE_ARGS = ("rollout_engine", "vllm_dtype", "logit_noise", "versions")


def _twin_key(record: dict) -> str:
    """The arguments that make the same cell on either engine (the model included; not the run length)."""
    args = {"attention_heads": 4, **record["args"]}
    return json.dumps({k: v for k, v in args.items() if k not in _ENGINE_ARGS}, sort_keys=True)


def vllm_table(records: list[dict]) -> str:
    """Each cell run on the vLLM rollout engine beside the same cell on the emulated (torch) engine, over the
    same number of versions (the first n of a longer emulated run where that is what exists)."""
    torch_runs = {_twin_key(r): r for r in sorted(records, key=lambda r: -len(r["per_version"])) if _emulated(r)}
    lines = [
        (
            "| study | k | window | seed | arm | versions | disc \\|Δ\\| vLLM | disc \\|Δ\\| emulated | masked frac vLLM "
            "| masked frac emulated | clip frac vLLM | clip frac emulated | auc vLLM | auc emulated | final vLLM "
            "| final emulated | rollout s / version vLLM | rollout s / version emulated | vLLM engine start s |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    vllm_runs = [r for r in records if not _emulated(r)]
    for r in sorted(vllm_runs, key=lambda r: (r["study"], r["args"]["staleness"], tuple(r["args"]["window"]), r["args"]["seed"], _arm_order(r["args"]["arm"]))):
        a = r["args"]
        n = len(r["per_version"])
        ours = _first_versions(r, n)
        twin = torch_runs.get(_twin_key(r))
        theirs = _first_versions(twin, n) if twin is not None and len(twin["per_version"]) >= n else None

        def pair(key, fmt, ours=ours, theirs=theirs):
            return f"{ours[key]:{fmt}} | " + (f"{theirs[key]:{fmt}}" if theirs else "—")

        lines.append(
            f"| {r['study']} | {a['staleness']} | {a['window'][0]:g}–{a['window'][1]:g} | {a['seed']} | {a['arm']} | {n} | "
            f"{pair('disc', '.4f')} | {pair('masked', '.3f')} | {pair('clip', '.3f')} | {pair('auc', '.3f')} | "
            f"{pair('final', '.3f')} | {pair('rollout', '.2f')} | {r['rollout_engine']['start_s']:.0f} |"
        )
    return "\n".join(lines) if vllm_runs else ""


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(records, out: Path, study: str, window) -> Path | None:
    rs = [r for r in records if r["study"] == study and tuple(r["args"]["window"]) == window]
    ks = sorted({r["args"]["staleness"] for r in rs if r["args"]["staleness"] > 0})
    if not ks:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(ks), figsize=(5 * len(ks), 4), sharey=True, squeeze=False)
    for ax, k in zip(axes[0], ks):
        for arm in ARMS:
            group = [r for r in rs if r["args"]["arm"] == arm and r["args"]["staleness"] in (k, 0 if arm == "sync" else k)]
            if not group:
                continue
            curves = np.array([[v["eval_reward"] for v in r["per_version"]] for r in group])
            x = np.arange(1, curves.shape[1] + 1)
            mean = curves.mean(axis=0)
            ax.plot(x, mean, color=COLORS[arm], label=arm, lw=1.5, ls="--" if arm == "sync" else "-")
            if len(group) > 1:
                ax.fill_between(x, curves.min(axis=0), curves.max(axis=0), color=COLORS[arm], alpha=0.12)
        ax.set_title(f"{study}, window {window[0]:g}–{window[1]:g}, k = {k}")
        ax.set_xlabel("trainer version")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("greedy eval reward (band: min–max over seeds)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    path = out / f"curves-{study}-{window[0]:g}_{window[1]:g}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_vs_k(records, out: Path, study: str, field: str, ylabel: str) -> Path | None:
    rs = [r for r in records if r["study"] == study]
    if not rs:
        return None
    plt = _plt()
    windows = sorted({tuple(r["args"]["window"]) for r in rs})
    fig, axes = plt.subplots(1, len(windows), figsize=(5.5 * len(windows), 4), squeeze=False)
    for ax, window in zip(axes[0], windows):
        for arm in ARMS:
            group = _group([r for r in rs if r["args"]["arm"] == arm and tuple(r["args"]["window"]) == window], "staleness")
            if not group:
                continue
            ks = sorted(k for (k,) in group)
            means = [np.mean([r[field] for r in group[(k,)]]) for k in ks]
            ax.plot(ks, means, marker="o", color=COLORS[arm], label=arm)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel("staleness k (versions)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{study}, window {window[0]:g}–{window[1]:g}")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    path = out / f"{field}-vs-k-{study}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_beta(records, out: Path) -> Path | None:
    rs = [r for r in records if r["args"]["arm"] == "ewma" and tuple(r["args"]["window"]) == (0.8, 1.25)
          and r["args"]["setting"] == "default" and r["args"]["turns"] == 1 and _beta_scan_model(r)]  # fmt: skip
    if not rs:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for k in sorted({r["args"]["staleness"] for r in rs}):
        group = _group([r for r in rs if r["args"]["staleness"] == k], "study")
        points = sorted((g[0]["effective"]["ewma_beta"], np.mean([r["ewma_abs_err_mean"] for r in g])) for g in group.values())
        ax.plot(*zip(*points), marker="o", label=f"k = {k}")
    ax.set_xlabel("EWMA decay β")
    ax.set_ylabel("mean |log π_ewma − log π_θv|")
    ax.set_title("EWMA error vs β (window 0.8–1.25)")
    ax.grid(alpha=0.3)
    ax.legend()
    path = out / "ewma-error-vs-beta.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_time(records, out: Path, study: str) -> Path | None:
    rs = [r for r in records if r["study"] == study and r["args"]["arm"] != "sync"]
    if not rs:
        return None
    k = max(r["args"]["staleness"] for r in rs)
    rs = [r for r in rs if r["args"]["staleness"] == k]
    plt = _plt()
    phases = ("rollout_s", "stall_s", "old_wait_s", "train_s", "publish_s")
    arms = sorted({r["args"]["arm"] for r in rs}, key=_arm_order)
    fig, ax = plt.subplots(figsize=(8, 4))
    bottom = np.zeros(len(arms))
    for phase in phases:
        values = np.array([np.mean([np.mean([v[phase] for v in r["per_version"]]) for r in rs if r["args"]["arm"] == a]) for a in arms])
        ax.bar(arms, values, bottom=bottom, label=phase.removesuffix("_s"))
        bottom += values
    ax.set_ylabel("seconds per version")
    ax.set_title(f"time per version, {study}, k = {k} (segment submits are inside rollout)")
    ax.tick_params(axis="x", rotation=30)
    ax.legend(fontsize=8)
    path = out / f"time-per-version-{study}-k{k}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_report(results: Path, out: Path) -> int:
    records = load(results)
    if not records:
        print(f"no result files under {results}")
        return 1
    out.mkdir(parents=True, exist_ok=True)
    plots = []
    for study in sorted({r["study"] for r in records if not r["study"].startswith("beta-")}):
        for window in sorted({tuple(r["args"]["window"]) for r in records if r["study"] == study}):
            plots.append(plot_curves(records, out, study, window))
        plots.append(plot_vs_k(records, out, study, "masked_frac_mean", "discrepancy-masked fraction"))
        plots.append(plot_vs_k(records, out, study, "clip_frac_mean", "PPO clip fraction"))
        plots.append(plot_time(records, out, study))
    plots.append(plot_beta(records, out))
    mismatches = check_exact_identity(results)
    sections = [
        "# Results\n",
        f"{len(records)} runs from `{results}`; made by `python -m experiments.async_rl report --results {results}`.\n",
        "## Learning and masking\n", headline_table([r for r in records if not r["study"].startswith("beta-")]), "",
        "## Paired differences\n",
        (
            "`auc` of the first arm minus the second's, per seed (seeds in the order listed); exact is "
            "`exact-snapshot`, or another exact strategy where a cell lacks it (they learn identically).\n"
        ),
        paired_table(records), "",
        "## System cost\n", cost_table(records), "", follower_vs_recompute(records), "",
        "## EWMA decay\n", beta_table(records), "",
        *(["## vLLM rollout engine vs the emulated one\n", vllm_table(records), ""] if vllm_table(records) else []),
        "## Exact strategies\n",
        "Bit-identical old log-probs in every (study, k, window, seed) cell holding all three." if not mismatches
        else "MISMATCHES:\n\n" + "\n".join(f"- {m}" for m in mismatches), "",
        "## Plots\n", *[f"![{p.stem}]({p.name})" for p in plots if p is not None],
    ]  # fmt: skip
    (out / "report.md").write_text("\n".join(sections) + "\n")
    print(f"wrote {out / 'report.md'} and {sum(p is not None for p in plots)} plots")
    return 1 if mismatches else 0

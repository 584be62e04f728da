"""The demo's PNG plots: the service's exactness per step, and what the loss sees under each "old" choice.

Drawn on matplotlib `Figure` objects, never pyplot, so no global backend is chosen and nothing needs a display.
"""

from __future__ import annotations

from pathlib import Path

from logit_service.demo.report import VIEWS


def write_plots(records, out_dir: Path, tolerance: float) -> list[Path]:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    out_dir.mkdir(parents=True, exist_ok=True)
    steps = [r.step for r in records]

    exactness = Figure(figsize=(9, 3.6), layout="constrained")
    ax_err, ax_stale = exactness.subplots(1, 2)
    # Exact answers can differ from a direct forward by exactly 0; a log axis needs a floor.
    ax_err.semilogy(steps, [max(r.max_error, 1e-12) for r in records], "o-", label="max |service − direct forward|")
    ax_err.axhline(tolerance, color="tab:red", linestyle="--", label=f"tolerance {tolerance:.0e}")
    ax_err.set(xlabel="trainer step", ylabel="nats", title="Exact old log-probs")
    ax_err.legend(fontsize=8)
    ax_stale.plot(steps, [r.staleness_mean for r in records], "o-", label="mean")
    ax_stale.plot(steps, [r.staleness_max for r in records], "s--", label="max")
    ax_stale.set(xlabel="trainer step", ylabel="versions behind the trainer", title="Staleness of scored tokens")
    ax_stale.legend(fontsize=8)

    loss = Figure(figsize=(9, 3.6), layout="constrained")
    ax_clip, ax_mask = loss.subplots(1, 2)
    for view in VIEWS:
        ax_clip.plot(steps, [r.views[view]["loss/clipfrac"] for r in records], "o-", label=view)
        ax_mask.plot(steps, [r.views[view]["discrepancy/masked_frac"] for r in records], "o-", label=view)
    ax_clip.set(xlabel="trainer step", ylabel="fraction of tokens", title="PPO-clipped (staleness term)")
    ax_mask.set(xlabel="trainer step", ylabel="fraction of tokens", title="Discrepancy-masked (engine term)")
    for ax in (ax_clip, ax_mask):
        ax.legend(title='"old" log-probs', fontsize=8)

    for ax in (ax_err, ax_stale, ax_clip, ax_mask):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    paths = [out_dir / "demo-exactness.png", out_dir / "demo-loss-views.png"]
    for figure, path in zip((exactness, loss), paths):
        figure.savefig(path, dpi=110)
    return paths

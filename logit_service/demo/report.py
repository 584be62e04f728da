"""Plain-text tables for the demo's output."""

from __future__ import annotations


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def print_service_table(records) -> None:
    print("\nExact old log-probs from the service, checked against direct forwards with each version's saved weights")
    headers = ["step", "trainer v", "seqs", "tokens", "versions in batch", "partial", "staleness mean/max", "max |err|", "tok/s", "reward"]
    rows = [
        [
            str(r.step), str(r.trainer_version), str(r.sequences), str(r.tokens),
            ",".join(map(str, r.versions_seen)), f"{r.partial}/{r.sequences}",
            f"{r.staleness_mean:.2f}/{r.staleness_max}", f"{r.max_error:.1e}", f"{r.tokens_per_s:,.0f}", f"{r.reward:.3f}",
        ]
        for r in records
    ]
    print(_table(headers, rows))


def print_loss_table(records) -> None:
    print(
        "\nWhat the decoupled PPO loss sees under each choice of \"old\" log-probs "
        "(clip = PPO-clipped fraction, mask = discrepancy-masked fraction, kl = discrepancy KL)"
    )
    names = ["exact", "ewma", "recompute"]
    headers = ["step"] + [f"{n} {m}" for n in names for m in ("clip", "mask", "kl")]
    rows = []
    for r in records:
        row = [str(r.step)]
        for n in names:
            m = r.views[n]
            row += [f"{m['loss/clipfrac']:.3f}", f"{m['discrepancy/masked_frac']:.3f}", f"{m['discrepancy/kl']:.1e}"]
        rows.append(row)
    print(_table(headers, rows))
    print(
        "exact: π_θv from the service (discrepancy term = engine noise only; PPO clip sees real staleness).\n"
        "ewma: the bias-corrected weight EWMA stands in for π_θv.  recompute: peers' choice, π_θk at the current\n"
        "weights: the ratio starts at 1, nothing is clipped, and the discrepancy mask fires on policy drift instead."
    )

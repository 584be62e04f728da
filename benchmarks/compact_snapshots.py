"""Compact snapshots: bytes per retained version and load time, against full copies, side by side.

Training set-up: a randomly initialised Qwen2 built from a config, trained for real with AdamW (lr 1e-6,
betas (0.9, 0.999), weight decay 0.01: learning rates of LLM RL) on random token batches; each optimiser
step is one version. fp32: the master weights as they are; bf16: the same versions cast to bfloat16, as
a mixed-precision trainer publishes them. Each version is written with the service's `write_snapshot`
twice, into a full store and into a compact one (every version but the newest and the keyframe a delta
from its newer neighbour), and:

  bytes       each delta's size / its full file's size, per consecutive pair; plus the order-0 entropy of
              the bit-pattern difference, the floor of any coder that looks at one weight at a time
  load        `SnapshotStore.load` (0-byte RAM cache: every call reads and verifies) of the same version,
              full vs compact (a delta from a full neighbour on disk), in rounds of rotating order; and a
              compact load whose neighbour is already in the RAM cache, and the longest chain
  exact       every compact version restores bit for bit under its published digest (exit 1 otherwise)

    .venv/bin/python benchmarks/compact_snapshots.py            # Qwen2 32000/512/8, 51.7 M params
    .venv/bin/python benchmarks/compact_snapshots.py --help
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "compact_snapshots.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--hidden-size", type=int, default=512, help="intermediate size is 2x; 4 heads, 2 KV heads")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--versions", type=int, default=5, help="versions written (optimiser steps + 1)")
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--max-shard-bytes", type=int, default=None,
                   help="write the weights in shard files of at most this many bytes (0: one file; default: the writer's own)")
    p.add_argument("--batch", type=int, default=4, help="sequences per training batch")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--reps", type=int, default=7, help="timed load rounds")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    return p.parse_args(argv)


def _sampled(data, width: int):
    """Every 7th element's bit pattern, as int64 (tensor data only, headers left out)."""
    import numpy as np

    dtype = {4: np.uint32, 2: np.uint16}[width]
    return data[: len(data) // width * width].view(dtype)[::7].astype(np.int64)


def _order0_bits(values) -> float:
    import numpy as np

    _, counts = np.unique(values, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def entropy_bits(a, b, width: int) -> float:
    """Order-0 entropy, in bits per element, of the integer difference of two versions' bit patterns
    (their tensor data, headers left out; sampled: every 7th element)."""
    return _order0_bits(_sampled(b, width) - _sampled(a, width))


def trend_entropy_bits(newer, this, newest, width: int) -> float:
    """The same entropy for a coder that also knew the trend: of this version's bit patterns minus
    the straight-line guess from its two newer neighbours (2 x newer - newest), as momentum would
    suggest. A floor for any coding that predicts each weight from two neighbours linearly."""
    return _order0_bits(_sampled(this, width) - (2 * _sampled(newer, width) - _sampled(newest, width)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    started = time.perf_counter()
    load_at_start = os.getloadavg()
    sys.path.insert(0, str(REPO))

    import numpy as np
    import numcodecs
    import torch

    from benchmarks.snapshot_load import run_rounds  # the same rotating rounds as the load benchmark
    from logit_service.demo.tiny_model import build_tiny_model, sgd_step
    from logit_service.registry.memory import InMemoryRegistry
    from logit_common.snapshots.compact import BLOCK_BYTES, CODEC, ZSTD_LEVEL
    from logit_service.snapshots.compact import compact_name
    from logit_service.snapshots.manifest import read_manifest, snapshot_dirname
    from logit_service.snapshots.store import SnapshotStore
    from logit_service.snapshots.loader import weights_file_names
    from logit_service.snapshots.writer import write_snapshot

    torch.set_num_threads(args.threads)
    model = build_tiny_model(seed=args.seed, vocab_size=args.vocab_size, hidden_size=args.hidden_size, layers=args.layers)
    config = model.config.to_dict()
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.999), weight_decay=0.01)
    generator = torch.Generator().manual_seed(args.seed)
    print(f"Qwen2 vocab {args.vocab_size}, hidden {args.hidden_size}, {args.layers} layers: {params / 1e6:.2f} M params; "
          f"AdamW lr {args.lr}, {args.versions - 1} steps of {args.batch} x {args.seq_len} tokens", flush=True)
    states, losses = [], []
    for v in range(args.versions):
        if v:
            losses.append(sgd_step(model, optimizer, torch.randint(0, args.vocab_size, (args.batch, args.seq_len), generator=generator)))
        states.append({k: t.detach().clone() for k, t in model.state_dict().items()})
    del model, optimizer
    report: dict = {
        "benchmark": "compact_snapshots",
        "argv": args.argv,
        "model": {"family": "qwen2", "vocab_size": args.vocab_size, "hidden_size": args.hidden_size,
                  "layers": args.layers, "params": params, "tie_word_embeddings": False},
        "training": {"optimizer": "AdamW", "lr": args.lr, "betas": [0.9, 0.999], "weight_decay": 0.01,
                     "steps_between_versions": 1, "batch": [args.batch, args.seq_len], "data": "random tokens",
                     "losses": losses, "bf16": "the fp32 master weights cast to bfloat16 at each version"},
        "codec": {"name": CODEC, "zstd_level": ZSTD_LEVEL, "block_bytes": BLOCK_BYTES, "numcodecs": numcodecs.__version__},
    }
    exact = True
    with tempfile.TemporaryDirectory(prefix="compact-bench-") as tmp:
        for dtype_name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            roots = {"full": Path(tmp) / dtype_name / "full", "compact": Path(tmp) / dtype_name / "compact"}
            # Keyframe interval past the last version: only version 0 and the newest stay full, so every
            # other version is a delta from its immediate newer neighbour.
            stores = {
                "full": SnapshotStore(roots["full"], InMemoryRegistry(), retention_window=args.versions, cache_bytes=0),
                "compact": SnapshotStore(roots["compact"], InMemoryRegistry(), retention_window=args.versions,
                                         cache_bytes=0, compact_keyframe_interval=args.versions + 1),
            }  # fmt: skip
            shard_option = {} if args.max_shard_bytes is None else {"max_shard_bytes": args.max_shard_bytes or None}
            for v, state in enumerate(states):
                cast = {k: t.to(dtype) if t.is_floating_point() else t for k, t in state.items()}
                for store in stores.values():
                    store.publish(v, write_snapshot(store.root, v, cast, config, **shard_option))
            t0 = time.perf_counter()
            compacted = stores["compact"].compactor.run_once()
            compact_s = time.perf_counter() - t0
            names = weights_file_names(read_manifest(roots["full"] / snapshot_dirname(0)))  # one file, or its shards

            def file_bytes(directory, suffix=""):
                return sum((directory / f"{n}{suffix}").stat().st_size for n in names)

            def weights_bytes(directory):
                """The tensor data of every weights file, past each safetensors header, end to end."""
                parts = []
                for n in names:
                    raw = np.fromfile(directory / n, dtype=np.uint8)
                    parts.append(raw[8 + int.from_bytes(raw[:8].tobytes(), "little") :])
                return np.concatenate(parts)

            full_bytes = file_bytes(roots["full"] / snapshot_dirname(0))
            per_version = []
            width = 4 if dtype == torch.float32 else 2
            for v in compacted:
                delta = sum((roots["compact"] / snapshot_dirname(v) / compact_name(n)).stat().st_size for n in names)
                a = weights_bytes(roots["full"] / snapshot_dirname(v + 1))
                b = weights_bytes(roots["full"] / snapshot_dirname(v))
                bits = entropy_bits(a, b, width)
                changed = float((a.view(np.uint8) != b.view(np.uint8)).mean())
                trend = None
                if v + 2 < args.versions:
                    trend = trend_entropy_bits(a, b, weights_bytes(roots["full"] / snapshot_dirname(v + 2)), width) / (8 * width)
                per_version.append({"version": v, "base": v + 1, "delta_bytes": delta, "ratio": delta / full_bytes,
                                    "entropy_bits_per_element": bits, "entropy_floor_ratio": bits / (8 * width),
                                    "trend_entropy_floor_ratio": trend, "bytes_changed_fraction": changed})  # fmt: skip
            for v in range(args.versions):
                for name, store in stores.items():
                    loaded = store.load(store.resolve(v)).state_dict
                    expected = {k: t.to(dtype) if t.is_floating_point() else t for k, t in states[v].items()}
                    same = all(torch.equal(loaded[k].view(torch.uint8), expected[k].view(torch.uint8)) for k in expected)
                    exact &= same and store.resolve(v).digest == read_manifest(store.root / snapshot_dirname(v)).digest
            # Load timing: the version just below the newest is a delta from a full file.
            target = args.versions - 2
            newest = args.versions - 1
            far = min(compacted) if compacted else target
            cached_store = SnapshotStore(roots["compact"], InMemoryRegistry(), retention_window=args.versions, cache_bytes=1 << 40)
            cached_store.recover()
            cached_store.load(cached_store.resolve(newest))  # the neighbour in RAM, as after scoring it
            modes = {
                "full": lambda: stores["full"].load(stores["full"].resolve(target)),
                "compact": lambda: stores["compact"].load(stores["compact"].resolve(target)),
                "compact_base_in_ram": lambda: _uncached_load(cached_store, target),
                "compact_longest_chain": lambda: stores["compact"].load(stores["compact"].resolve(far)),
            }
            samples = run_rounds(modes, args.reps, args.warmup)
            med = {k: statistics.median(s) for k, s in samples.items()}
            ratios = [d["ratio"] for d in per_version]
            report[dtype_name] = {
                "full_file_bytes": full_bytes,
                "per_version": per_version,
                "delta_ratio_median": statistics.median(ratios) if ratios else None,
                "delta_ratio_max": max(ratios) if ratios else None,
                "entropy_floor_ratio_median": statistics.median(d["entropy_floor_ratio"] for d in per_version) if per_version else None,
                "trend_entropy_floor_ratio_median": statistics.median(trends) if (trends := [
                    d["trend_entropy_floor_ratio"] for d in per_version if d["trend_entropy_floor_ratio"] is not None
                ]) else None,
                "compact_pass_s": compact_s,
                "load_ms": {k: {"median": v * 1e3, "min": min(samples[k]) * 1e3, "samples": [x * 1e3 for x in samples[k]]} for k, v in med.items()},
                "load_ratio": {k: med[k] / med["full"] for k in med if k != "full"},
                "load_ratio_per_round": {k: statistics.median(a / b for a, b in zip(samples[k], samples["full"])) for k in med if k != "full"},
                "chain_of_longest": newest - far,
            }
            print(f"{dtype_name}: delta / full {statistics.median(ratios) if ratios else float('nan'):.4f} (median of {len(ratios)}), "
                  f"entropy floor {report[dtype_name]['entropy_floor_ratio_median']}; load compact/full "
                  f"{med['compact'] / med['full']:.2f}, base in RAM {med['compact_base_in_ram'] / med['full']:.2f}, "
                  f"chain of {newest - far} {med['compact_longest_chain'] / med['full']:.2f} "
                  f"(full {med['full'] * 1e3:.1f} ms)", flush=True)
    report["exact"] = exact
    report["machine"] = {"cpu_count": os.cpu_count(), "load_average_at_start": list(load_at_start),
                         "load_average_at_end": list(os.getloadavg()), "platform": platform.platform(),
                         "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    report["wall_s"] = time.perf_counter() - started
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output} ({report['wall_s']:.0f} s in all); every version restored bit for bit: {exact}")
    return 0 if exact else 1


def _uncached_load(store, version: int):
    """A load of `version` from disk while its neighbour stays in the RAM cache."""
    store.cache.drop(str(version))
    return store.load(store.resolve(version))


if __name__ == "__main__":
    sys.exit(main())

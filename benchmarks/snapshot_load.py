"""Snapshot load and version swap: the service's own paths against their floors, side by side, in one run.

One snapshot (a randomly initialised Qwen2 built from a config, float32) is written with the service's
`write_snapshot`, then read back warm, from the page cache, in rounds that rotate the order of:

  disk, floor A     raw `readinto` of the weights file into a preallocated, already-touched buffer (no hash)
  disk, floor B     `safetensors.torch.load_file` + `.clone()` of every tensor (the safetensors read floor)
  disk, ours        `load_verified_weights`: one read into a fresh buffer, sha256 as it arrives, views
and, to take the difference apart: the same raw read into a fresh buffer (what ours allocates), sha256 alone
over an in-memory buffer, `load_file(backend="pread")`, the server's full cache-miss path
(`SnapshotStore.load`), and a sketch that overlaps read and hash in two threads (not the service's code).

Version swap, alternating between two versions' verified state dicts so that every call really copies:

  swap, floor       `torch._foreach_copy_` (and a plain `dst.copy_(src)` loop) into preallocated tensors
  swap, ours        `TorchBackend.load(key, digest, state_dict)`: `load_state_dict` into the resident model

Then, unless --no-cold, the three disk modes and the fresh-buffer read again with the file evicted from the page cache before
each call (posix_fadvise DONTNEED, checked with mincore; falls back to /proc/sys/vm/drop_caches).

    .venv/bin/python benchmarks/snapshot_load.py            # defaults: Qwen2 32000/512/8, 51.7 M params
    .venv/bin/python benchmarks/snapshot_load.py --help
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import platform
import queue
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "snapshot_load.json"
GB = 1e9  # figures are in GB/s = 10^9 bytes per second


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--hidden-size", type=int, default=512, help="intermediate size is 2x; 4 heads, 2 KV heads")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--reps", type=int, default=9, help="timed rounds; each round times every mode once")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--cold-reps", type=int, default=5, help="timed calls of each mode with the file evicted first")
    p.add_argument("--cold", action=argparse.BooleanOptionalAction, default=True, help="also measure cold reads")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--thp-alloc", action="store_true",
                   help="set THP_MEM_ALLOC_ENABLE=1 before torch is imported: torch's CPU allocator then asks for "
                        "transparent huge pages (madvise) for large buffers; the service does not set it")
    p.add_argument("--max-shard-bytes", type=int, default=None,
                   help="write the weights in shard files of at most this many bytes (0: one file; default: the writer's own)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    return p.parse_args(argv)


# --- the page cache -------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def resident_fraction(paths: list[Path]) -> float | None:
    """Fraction of the files' pages in the page cache, weighted by size, or None if it cannot be asked."""
    sizes = [p.stat().st_size for p in paths]
    fractions = [_resident_fraction(p) for p in paths]
    if any(f is None for f in fractions):
        return None
    return sum(f * n for f, n in zip(fractions, sizes)) / sum(sizes)


def _resident_fraction(path: Path) -> float | None:
    """Fraction of the file's pages in the page cache (mincore), or None if it cannot be asked."""
    size = path.stat().st_size
    page = os.sysconf("SC_PAGE_SIZE")
    pages = (size + page - 1) // page
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
        if addr in (None, ctypes.c_void_p(-1).value):
            return None
        try:
            vec = (ctypes.c_ubyte * pages)()
            if _libc.mincore(addr, size, vec) != 0:
                return None
            return sum(b & 1 for b in vec) / pages
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def evict(paths: list[Path], method: str) -> None:
    if method == "fadvise":
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the pages are clean: the writer fsync'd
            finally:
                os.close(fd)
    else:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def find_eviction(paths: list[Path]) -> tuple[str | None, list[str]]:
    """The first method that really empties the page cache of the files, and notes on the ones tried."""
    notes = []
    for method in ("fadvise", "drop_caches"):
        try:
            evict(paths, method)
        except OSError as e:
            notes.append(f"{method}: {e}")
            continue
        left = resident_fraction(paths)
        _warm(paths)  # warm again, so what follows starts from the same state
        if left is not None and left < 0.01:
            notes.append(f"{method}: evicts (resident fraction after it {left:.3f})")
            return method, notes
        notes.append(f"{method}: ran but left {left} of the file resident")
    return None, notes


def _warm(paths: list[Path]) -> None:
    for path in paths:
        path.read_bytes()


# --- the modes ------------------------------------------------------------------------------------


def make_disk_modes(paths: list[Path], manifest, record, store, chunk: int) -> dict[str, Callable[[], object]]:
    """Every mode reads all the weight files (one, or the shards of a large model), one after another."""
    import torch
    from safetensors.torch import load_file

    from logit_service.snapshots.loader import load_verified_weights

    sizes = [p.stat().st_size for p in paths]
    expected = [manifest.files[p.name] for p in paths]
    # One touched buffer per file (no first-touch page faults inside the timing), holding its bytes.
    preallocs = [torch.ones(size, dtype=torch.uint8) for size in sizes]
    prealloc_views = [memoryview(b.numpy()) for b in preallocs]

    def read_into(path: Path, size: int, view: memoryview) -> None:
        with open(path, "rb") as f:
            filled = 0
            while filled < size:
                got = f.readinto(view[filled : min(filled + chunk, size)])
                if not got:
                    raise RuntimeError(f"{path} ended early")
                filled += got

    def floor_a_read_prealloc():
        for path, size, view in zip(paths, sizes, prealloc_views):
            read_into(path, size, view)

    floor_a_read_prealloc()  # so that the buffers hold the files' bytes for sha256_only

    def read_fresh():
        buffers = []
        for path, size in zip(paths, sizes):
            buffers.append(torch.empty(size, dtype=torch.uint8))
            read_into(path, size, memoryview(buffers[-1].numpy()))
        return buffers

    def sha256_only():
        for path, size, view, sha in zip(paths, sizes, prealloc_views, expected):
            h = hashlib.sha256()
            for start in range(0, size, chunk):
                h.update(view[start : start + chunk])
            if h.hexdigest() != sha:
                raise RuntimeError(f"sha256 of the preallocated buffer of {path.name} does not match the manifest")

    def floor_b_safetensors_clone():
        return [{k: v.clone() for k, v in load_file(str(path)).items()} for path in paths]

    def safetensors_pread():
        return [load_file(str(path), backend="pread") for path in paths]

    def ours():
        return load_verified_weights(paths[0].parent, manifest)

    def store_load_miss():
        return store.load(record)  # the cache's budget is 0 bytes: every call reads and verifies

    def sketch_overlap():
        """Each file read on this thread while another hashes what has arrived (one file at a time)."""
        buffers = []
        for path, size, sha in zip(paths, sizes, expected):
            buffer = torch.empty(size, dtype=torch.uint8)
            view = memoryview(buffer.numpy())
            h = hashlib.sha256()
            spans: queue.SimpleQueue = queue.SimpleQueue()

            def hasher(h=h, view=view, spans=spans):
                while (span := spans.get()) is not None:
                    h.update(view[span[0] : span[1]])

            worker = threading.Thread(target=hasher)
            worker.start()
            try:
                with open(path, "rb") as f:
                    filled = 0
                    while filled < size:
                        got = f.readinto(view[filled : filled + chunk])
                        if not got:
                            raise RuntimeError(f"{path} ended early")
                        spans.put((filled, filled + got))
                        filled += got
            finally:
                spans.put(None)
                worker.join()
            if h.hexdigest() != sha:
                raise RuntimeError("overlapped sha256 does not match the manifest")
            buffers.append(buffer)
        return buffers

    return {
        "floor_a_read_prealloc": floor_a_read_prealloc,
        "read_fresh_buffer": read_fresh,
        "sha256_in_memory": sha256_only,
        "floor_b_safetensors_clone": floor_b_safetensors_clone,
        "safetensors_pread": safetensors_pread,
        "ours_load_verified_weights": ours,
        "ours_store_load_miss": store_load_miss,
        "sketch_read_hash_overlapped": sketch_overlap,
    }


def make_swap_modes(backend, versions: list[tuple[str, str, dict]]) -> dict[str, Callable[[], object]]:
    import torch

    names = list(versions[0][2])
    srcs = [[sd[n] for n in names] for _, _, sd in versions]
    dsts = [torch.empty_like(t, memory_format=torch.contiguous_format).fill_(0.5) for t in srcs[0]]
    turn = {"foreach": 0, "loop": 0, "ours": 0}

    def next_version(mode: str) -> int:
        turn[mode] ^= 1
        return turn[mode]

    def floor_foreach_copy():
        with torch.no_grad():
            torch._foreach_copy_(dsts, srcs[next_version("foreach")])

    def floor_copy_loop():
        with torch.no_grad():
            for dst, src in zip(dsts, srcs[next_version("loop")]):
                dst.copy_(src)

    def ours():
        key, digest, state_dict = versions[next_version("ours")]
        before = backend.resident_key
        backend.load(key, digest, state_dict)
        if backend.resident_key == before:
            raise RuntimeError("the backend did not swap")

    return {"swap_floor_foreach_copy": floor_foreach_copy, "swap_floor_copy_loop": floor_copy_loop, "swap_ours_backend_load": ours}


def run_rounds(modes: dict[str, Callable[[], object]], reps: int, warmup: int) -> dict[str, list[float]]:
    """Every round times each mode once, in a rotating order; results are dropped before the next call."""
    names = list(modes)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + reps):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            result = modes[name]()
            elapsed = time.perf_counter() - t0
            del result
            if r >= warmup:
                samples[name].append(elapsed)
    return samples


def summarise(seconds: list[float], nbytes: int) -> dict:
    median = statistics.median(seconds)
    return {
        "median_ms": median * 1e3,
        "min_ms": min(seconds) * 1e3,
        "max_ms": max(seconds) * 1e3,
        "gb_per_s_median": nbytes / median / GB,
        "gb_per_s_best": nbytes / min(seconds) / GB,
        "samples_ms": [s * 1e3 for s in seconds],
    }


def ratios(samples: dict[str, list[float]], num: str, den: str) -> dict:
    a, b = samples[num], samples[den]
    return {
        "of_medians": statistics.median(a) / statistics.median(b),
        "per_round_median": statistics.median(x / y for x, y in zip(a, b)),
        "best": min(a) / min(b),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_has_sha_ni() -> bool | None:
    try:
        return any(line.startswith("flags") and " sha_ni" in line for line in Path("/proc/cpuinfo").read_text().splitlines())
    except OSError:
        return None


def read_text(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


# --- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    if args.thp_alloc:
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
    started = time.perf_counter()
    load_at_start = os.getloadavg()
    sys.path.insert(0, str(REPO))

    import safetensors
    import torch
    import transformers

    from logit_service.backends.torch_backend import TorchBackend
    from logit_service.demo.tiny_model import build_tiny_model
    from logit_service.registry.memory import InMemoryRegistry
    from logit_service.snapshots import loader
    from logit_service.snapshots.loader import load_verified_weights
    from logit_service.snapshots.manifest import read_manifest
    from logit_service.snapshots.store import SnapshotStore
    from logit_service.snapshots.loader import weights_file_names
    from logit_service.snapshots.writer import write_snapshot

    torch.set_num_threads(args.threads)
    chunk = loader._CHUNK_BYTES

    with tempfile.TemporaryDirectory(prefix="snapshot-load-bench-") as tmp:
        root = Path(tmp) / "snapshots"
        model = build_tiny_model(seed=args.seed, vocab_size=args.vocab_size, hidden_size=args.hidden_size, layers=args.layers)
        config = model.config.to_dict()
        params = sum(p.numel() for p in model.parameters())
        param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        print(f"Qwen2 vocab {args.vocab_size}, hidden {args.hidden_size}, {args.layers} layers: "
              f"{params / 1e6:.2f} M params, {param_bytes / 1e6:.1f} MB float32")

        write_s = []
        paths = []
        shard_option = {} if args.max_shard_bytes is None else {"max_shard_bytes": args.max_shard_bytes or None}
        for version in (0, 1):
            if version == 1:
                with torch.no_grad():  # a second version: every weight differs
                    for p in model.parameters():
                        p.add_(1e-3)
            t0 = time.perf_counter()
            paths.append(write_snapshot(root, version, model.state_dict(), config, **shard_option))
            write_s.append(time.perf_counter() - t0)
        del model
        snapshot = paths[0]
        manifests = [read_manifest(p) for p in paths]
        weights = [snapshot / name for name in weights_file_names(manifests[0])]  # one file, or its shards
        file_bytes = sum(w.stat().st_size for w in weights)
        resident_after_write = resident_fraction(weights)
        print(f"snapshot written: {file_bytes / 1e6:.1f} MB in {len(weights)} weights file(s), write_snapshot {write_s[0] * 1e3:.0f} ms; "
              f"resident in page cache after writing: {resident_after_write}")

        store = SnapshotStore(root, InMemoryRegistry(), retention_window=4, cache_bytes=0, delete_evicted=False)
        record, _ = store.publish(0, snapshot)

        # --- disk, warm
        disk_modes = make_disk_modes(weights, manifests[0], record, store, chunk)
        print(f"disk, warm: {args.warmup} warm-up + {args.reps} rounds of {len(disk_modes)} modes ...", flush=True)
        disk = run_rounds(disk_modes, args.reps, args.warmup)
        resident_after_warm = resident_fraction(weights)

        # --- version swap
        backend = TorchBackend()
        backend.ensure_model(config)
        versions = [(str(m.policy_version), m.digest, load_verified_weights(p, m)) for p, m in zip(paths, manifests)]
        swap_modes = make_swap_modes(backend, versions)
        print(f"version swap: {args.warmup} warm-up + {args.reps} rounds of {len(swap_modes)} modes ...", flush=True)
        swap = run_rounds(swap_modes, args.reps, args.warmup)
        resident = dict(backend.model.state_dict())
        _, _, state_dict = versions[int(backend.resident_key)]
        swap_exact = all(torch.equal(resident[name], tensor) for name, tensor in state_dict.items())
        swap_param_bytes = sum(t.numel() * t.element_size() for t in state_dict.values())
        del backend, versions, swap_modes, resident, state_dict

        # --- disk, cold
        cold: dict = {"measured": False}
        if args.cold:
            method, notes = find_eviction(weights)
            cold["eviction_notes"] = notes
            if method is not None:
                cold_names = ["floor_a_read_prealloc", "read_fresh_buffer", "floor_b_safetensors_clone",
                              "ours_load_verified_weights"]
                cold_samples: dict[str, list[float]] = {n: [] for n in cold_names}
                residency: list[float | None] = []
                print(f"disk, cold ({method} before each call): {args.cold_reps} rounds of {len(cold_names)} modes ...", flush=True)
                for r in range(args.cold_reps):
                    shift = r % len(cold_names)
                    for name in cold_names[shift:] + cold_names[:shift]:
                        evict(weights, method)
                        residency.append(resident_fraction(weights))
                        t0 = time.perf_counter()
                        result = disk_modes[name]()
                        cold_samples[name].append(time.perf_counter() - t0)
                        del result
                cold = {
                    "measured": True,
                    "eviction": method,
                    "eviction_notes": notes,
                    "max_resident_fraction_before_a_call": max((x for x in residency if x is not None), default=None),
                    "modes": {n: summarise(s, file_bytes) for n, s in cold_samples.items()},
                    "ratios": {
                        "ours_over_floor_a": ratios(cold_samples, "ours_load_verified_weights", "floor_a_read_prealloc"),
                        "ours_over_floor_b": ratios(cold_samples, "ours_load_verified_weights", "floor_b_safetensors_clone"),
                        # Reading the file's bytes into new memory: what any loader of the file must do.
                        "ours_over_read_fresh": ratios(cold_samples, "ours_load_verified_weights", "read_fresh_buffer"),
                    },
                }
                _warm(weights)  # leave it warm

    disk_stats = {n: summarise(s, file_bytes) for n, s in disk.items()}
    swap_stats = {n: summarise(s, swap_param_bytes) for n, s in swap.items()}
    swap_floor = min(("swap_floor_foreach_copy", "swap_floor_copy_loop"), key=lambda n: statistics.median(swap[n]))
    med = {n: s["median_ms"] for n, s in {**disk_stats, **swap_stats}.items()}
    report = {
        "benchmark": "snapshot_load",
        "argv": args.argv,
        "model": {"family": "qwen2", "vocab_size": args.vocab_size, "hidden_size": args.hidden_size,
                  "intermediate_size": 2 * args.hidden_size, "layers": args.layers, "heads": 4, "kv_heads": 2,
                  "params": params, "param_bytes": param_bytes, "dtype": "float32", "tie_word_embeddings": False},
        "snapshot": {"weights_file_bytes": file_bytes, "weights_files": len(weights), "write_snapshot_ms": [s * 1e3 for s in write_s],
                     "read_chunk_bytes": chunk, "resident_fraction_after_write": resident_after_write,
                     "resident_fraction_after_warm_rounds": resident_after_warm},
        "reps": args.reps,
        "warmup": args.warmup,
        "units": "ms; GB/s with GB = 1e9 bytes (disk: weights file bytes; swap: parameter bytes copied)",
        "disk_warm": {
            "modes": disk_stats,
            "ratios": {
                "ours_over_floor_a": ratios(disk, "ours_load_verified_weights", "floor_a_read_prealloc"),
                "ours_over_floor_b": ratios(disk, "ours_load_verified_weights", "floor_b_safetensors_clone"),
                "store_load_miss_over_floor_b": ratios(disk, "ours_store_load_miss", "floor_b_safetensors_clone"),
                "sketch_overlap_over_floor_b": ratios(disk, "sketch_read_hash_overlapped", "floor_b_safetensors_clone"),
            },
            "breakdown_of_ours_ms": {
                "read_into_touched_buffer": med["floor_a_read_prealloc"],
                "first_touch_of_a_fresh_buffer": med["read_fresh_buffer"] - med["floor_a_read_prealloc"],
                "sha256": med["sha256_in_memory"],
                "sum": med["read_fresh_buffer"] + med["sha256_in_memory"],
                "measured": med["ours_load_verified_weights"],
            },
        },
        "disk_cold": cold,
        "swap": {
            "modes": swap_stats,
            "floor": swap_floor,
            "ratios": {"ours_over_floor": ratios(swap, "swap_ours_backend_load", swap_floor),
                       "ours_over_foreach_copy": ratios(swap, "swap_ours_backend_load", "swap_floor_foreach_copy")},
            "resident_weights_equal_source_bitwise": swap_exact,
            "param_bytes_copied": swap_param_bytes,
        },
        "version_switch_ms": {
            "cache_hit_swap_only": med["swap_ours_backend_load"],
            "cache_miss_store_load_plus_swap": med["ours_store_load_miss"] + med["swap_ours_backend_load"],
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "cpu_model": cpu_model(),
            "cpu_sha_ni": cpu_has_sha_ni(),
            "transparent_hugepage": read_text("/sys/kernel/mm/transparent_hugepage/enabled"),
            "thp_mem_alloc_enable": os.environ.get("THP_MEM_ALLOC_ENABLE"),
            "load_average_at_start": list(load_at_start),
            "load_average_at_end": list(os.getloadavg()),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "openssl": __import__("ssl").OPENSSL_VERSION,
            "torch": torch.__version__,
            "safetensors": safetensors.__version__,
            "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        },
        "wall_s": time.perf_counter() - started,
    }
    print_tables(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output} ({report['wall_s']:.0f} s in all)")
    if not swap_exact:
        print("FAIL: the resident weights differ from the version loaded last", file=sys.stderr)
        return 1
    return 0


LABELS = {
    "floor_a_read_prealloc": "floor A: readinto a touched buffer, no hash",
    "read_fresh_buffer": "readinto a fresh buffer, no hash",
    "sha256_in_memory": "sha256 alone, over RAM",
    "floor_b_safetensors_clone": "floor B: safetensors load_file + clone",
    "safetensors_pread": "safetensors load_file(backend=pread)",
    "ours_load_verified_weights": "ours: load_verified_weights",
    "ours_store_load_miss": "ours: SnapshotStore.load, cache miss",
    "sketch_read_hash_overlapped": "sketch: read || sha256 in 2 threads",
    "swap_floor_foreach_copy": "floor: torch._foreach_copy_",
    "swap_floor_copy_loop": "floor: dst.copy_(src) loop",
    "swap_ours_backend_load": "ours: TorchBackend.load",
}


def print_tables(report: dict) -> None:
    def table(title: str, modes: dict) -> None:
        print(f"\n{title}")
        print(f"  {'mode':<42} {'median ms':>10} {'min ms':>9} {'GB/s med':>9} {'GB/s best':>10}")
        for name, s in modes.items():
            print(f"  {LABELS[name]:<42} {s['median_ms']:>10.1f} {s['min_ms']:>9.1f} "
                  f"{s['gb_per_s_median']:>9.2f} {s['gb_per_s_best']:>10.2f}")

    def show_ratios(rs: dict) -> None:
        for name, r in rs.items():
            print(f"  {name:<42} of medians {r['of_medians']:.2f}   per round {r['per_round_median']:.2f}   "
                  f"best {r['best']:.2f}")

    warm = report["disk_warm"]
    table("disk load, warm page cache", warm["modes"])
    show_ratios(warm["ratios"])
    b = warm["breakdown_of_ours_ms"]
    print(f"  ours = read {b['read_into_touched_buffer']:.1f} + first touch {b['first_touch_of_a_fresh_buffer']:.1f} "
          f"+ sha256 {b['sha256']:.1f} = {b['sum']:.1f} ms expected, {b['measured']:.1f} ms measured")
    cold = report["disk_cold"]
    if cold.get("measured"):
        table(f"disk load, cold (evicted with {cold['eviction']} before each call)", cold["modes"])
        show_ratios(cold["ratios"])
    else:
        print(f"\ndisk load, cold: not measured {cold.get('eviction_notes', '')}")
    swap = report["swap"]
    table("version swap (two versions alternating)", swap["modes"])
    show_ratios(swap["ratios"])
    print(f"  resident weights equal the last version bit for bit: {swap['resident_weights_equal_source_bitwise']}")
    v = report["version_switch_ms"]
    print(f"\nversion switch: cache hit {v['cache_hit_swap_only']:.1f} ms, "
          f"cache miss (store load + swap) {v['cache_miss_store_load_plus_swap']:.1f} ms")


if __name__ == "__main__":
    sys.exit(main())

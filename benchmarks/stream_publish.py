"""Streamed publishing (UploadVersion) against a loopback copy of the same bytes, side by side.

What a deployment without a shared disk pays to publish a version: the snapshot's files streamed in
1 MiB messages to a real server process on 127.0.0.1 (as a trainer and a replica are two processes),
which writes them into staging, hashes every file,
renames the snapshot into place and registers it. The floor moves the very same file bytes over a
raw TCP socket on 127.0.0.1 into a file on the same disk, flushed and fsync'd as the server's are,
with no protobuf, no hashing and no registry. Rounds alternate the two (each round times each once,
a new version number per upload), and the ratio is of their median rates.

    .venv/bin/python benchmarks/stream_publish.py                       # ~117 MB fp32 model
    .venv/bin/python benchmarks/stream_publish.py --vocab-size 256 --hidden-size 32 --layers 1 --reps 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "stream_publish.json"
MiB = 1 << 20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--vocab-size", type=int, default=32768)
    p.add_argument("--hidden-size", type=int, default=512, help="intermediate size is 2x")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--reps", type=int, default=7, help="timed rounds; each times one upload and one loopback copy")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (the first upload also builds the model)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of the server")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    return p.parse_args(argv)


class LoopbackSink:
    """A raw TCP receiver on 127.0.0.1: each connection's bytes go into a new file, fsync'd at the end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self._count = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn, open(self.directory / f"copy-{self._count}", "wb", buffering=0) as out:
                self._count += 1
                buffer = bytearray(MiB)
                view = memoryview(buffer)
                while n := conn.recv_into(view):
                    out.write(view[:n])
                os.fsync(out.fileno())
                conn.sendall(b"k")  # the sender's clock stops once the bytes are durable, as an upload's does

    def copy(self, paths: list[Path]) -> None:
        with socket.create_connection(self.address) as conn:
            for path in paths:
                with open(path, "rb") as f:
                    conn.sendfile(f)
            conn.shutdown(socket.SHUT_WR)
            assert conn.recv(1) == b"k"

    def close(self) -> None:
        self.listener.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path[:0] = [str(REPO), str(REPO / "clients")]
    import torch

    torch.set_num_threads(args.threads)
    from logit_client import LogitClient
    from logit_client.upload import plan_upload
    from logit_common.snapshots.writer import write_snapshot

    from benchmarks.service_overhead import ServerProcess
    from logit_service.demo.tiny_model import build_tiny_model

    model = build_tiny_model(seed=0, vocab_size=args.vocab_size, hidden_size=args.hidden_size, layers=args.layers)
    state, config = model.state_dict(), model.config.to_dict()
    rounds = args.warmup + args.reps
    with tempfile.TemporaryDirectory(prefix="stream-publish-") as tmp:
        tmp_path = Path(tmp)
        trainer, served, sink_dir = tmp_path / "trainer", tmp_path / "served", tmp_path / "sink"
        for d in (trainer, served, sink_dir):
            d.mkdir()
        snapshots = [write_snapshot(trainer, v, state, config) for v in range(rounds)]
        plan = plan_upload(snapshots[0], None)
        nbytes = plan.bytes_sent
        server = ServerProcess(served, args.threads, tmp_path / "server.log",
                               ["--cache-bytes", "0", "--retention-window", "2"]).start()  # fmt: skip
        sink = LoopbackSink(sink_dir)
        upload_s, loopback_s = [], []
        try:
            with LogitClient(server.address, timeout_s=600, max_retries=0) as client:
                for v, snapshot in enumerate(snapshots):
                    files = [snapshot / "manifest.json", *(snapshot / f.name for f in plan.files)]
                    started = time.perf_counter()
                    client.upload_version(v, snapshot, compact=False)
                    took_upload = time.perf_counter() - started
                    started = time.perf_counter()
                    sink.copy(files)
                    took_loopback = time.perf_counter() - started
                    for leftover in sink_dir.iterdir():
                        leftover.unlink()
                    if v >= args.warmup:
                        upload_s.append(took_upload)
                        loopback_s.append(took_loopback)
                    print(f"round {v}: upload {nbytes / took_upload / MiB:8.1f} MiB/s   "
                          f"loopback {nbytes / took_loopback / MiB:8.1f} MiB/s", flush=True)
        finally:
            sink.close()
            server.stop()

    def rate(seconds: list[float]) -> dict:
        med = statistics.median(seconds)
        return {"median_s": med, "min_s": min(seconds), "max_s": max(seconds), "mib_per_s": nbytes / med / MiB,
                "seconds": seconds}  # fmt: skip

    per_round = [lo / up for up, lo in zip(upload_s, loopback_s)]
    results = {
        "model": {"vocab_size": args.vocab_size, "hidden_size": args.hidden_size, "layers": args.layers,
                  "dtype": "float32", "bytes_sent": nbytes, "files": [f.name for f in plan.files]},
        "modes": {"upload": rate(upload_s), "loopback": rate(loopback_s)},
        "ratio_of_medians": (nbytes / statistics.median(upload_s)) / (nbytes / statistics.median(loopback_s)),
        "ratio_median_of_per_round": statistics.median(per_round),
        "reps": args.reps, "warmup": args.warmup, "threads": args.threads,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg": os.getloadavg()},
    }  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{nbytes / MiB:.1f} MiB per version: upload {results['modes']['upload']['mib_per_s']:.1f} MiB/s, "
          f"loopback {results['modes']['loopback']['mib_per_s']:.1f} MiB/s, ratio {results['ratio_of_medians']:.3f}; "
          f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

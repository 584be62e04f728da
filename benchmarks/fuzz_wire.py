"""Malformed requests over the real wire: every answer must be a deliberate status, never INTERNAL or
UNKNOWN, never a hang, never a crash, and memory must come back.

A `logit-service serve` process on 127.0.0.1 holds two versions of a tiny model. Cases are built from
the raw messages by a seeded generator, one family at a time in rotation:

  lengths     token_ids whose byte length is not a multiple of 4, spans past the end, empty sequences
  spans       start >= end, start 0, negative, overlapping, past the end, more spans than tokens
  ids         negative, at or past the vocabulary, int32 extremes
  versions    negative, unknown, int64 extremes, in spans, publishes, leases, barriers and lookups
  bytes       a valid serialized request with random bytes flipped, truncated, extended, or replaced
  fields      random strings (NUL, control characters, bad paths, huge holders and ids) in every field
  temperature 0, negative, NaN, ±inf, 1e-45, 1e300
  oversized   more sequences or tokens than the server allows

A hang is a case that ran into its deadline (each case has 20 s; none needs more than milliseconds).

    .venv/bin/python benchmarks/fuzz_wire.py                 # 10,000 cases
    .venv/bin/python benchmarks/fuzz_wire.py --cases 300     # what the test suite runs
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "fuzz_wire.json"
VOCAB = 64
FAMILIES = ("lengths", "spans", "ids", "versions", "bytes", "fields", "temperature", "oversized")
SERVICE = "/logit_service.v1.LogitService/"
CASE_TIMEOUT_S = 20.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cases", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    return p.parse_args(argv)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def start_server(snapshot_dir: Path, port: int, log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "clients")]))
    args = [
        sys.executable, "-m", "logit_service.cli", "--log-level", "WARNING", "serve", "--host", "127.0.0.1",
        "--port", str(port), "--snapshot-dir", str(snapshot_dir), "--max-sequences-per-request", "64",
        "--max-tokens-per-request", "8192", "--max-message-bytes", str(4 << 20), "--access-log", "off",
    ]  # fmt: skip
    return subprocess.Popen(args, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)


class CaseMaker:
    """Builds (method, request bytes, family) cases; messages are built valid, then broken."""

    def __init__(self, seed: int, snapshot_dir: Path) -> None:
        from logit_service.v1 import logit_service_pb2 as pb

        self.pb = pb
        self.rng = random.Random(seed)
        self.snapshot_dir = snapshot_dir

    def tokens(self, n: int, bad: int | None = None) -> bytes:
        import numpy as np

        ids = np.array([self.rng.randrange(VOCAB) for _ in range(n)], dtype="<i4")
        if bad is not None and n:
            ids[self.rng.randrange(n)] = bad
        return ids.tobytes()

    def score(self, sequences=None, **fields):
        pb = self.pb
        if sequences is None:
            n = self.rng.randint(2, 24)
            sequences = [pb.Sequence(token_ids=self.tokens(n), spans=[pb.VersionSpan(policy_version=self.rng.choice([0, 1]), start=1, end=n)])]
        return pb.ScoreRequest(sequences=sequences, **fields)

    def odd_string(self) -> str:
        return self.rng.choice([
            "\x00", "a\x00b", "\x07\x1b[2J", "../" * 50, "/etc/passwd", "v00000000/../../x", "é" * 300, "x" * 5000,
            "", " ", "v" + "9" * 40, "ewma-v00000001", "\n\r\t", "%s%n%x", "$(reboot)",
        ])  # fmt: skip

    def make(self, index: int) -> tuple[str, bytes, str]:
        family = FAMILIES[index % len(FAMILIES)]
        method, message = getattr(self, "_" + family)()
        data = message if isinstance(message, bytes) else message.SerializeToString()
        return method, data, family

    def _lengths(self):
        pb, r = self.pb, self.rng
        n = r.randint(2, 20)
        raw = self.tokens(n)
        choice = r.randrange(4)
        if choice == 0:
            raw = raw[: len(raw) - r.randint(1, 3)]
        elif choice == 1:
            raw = b""
        spans = [pb.VersionSpan(policy_version=0, start=1, end=n + (r.randint(1, 5) if choice == 2 else 0))]
        if choice == 3:
            spans = []
        return "Score", self.score([pb.Sequence(token_ids=raw, spans=spans)])

    def _spans(self):
        pb, r = self.pb, self.rng
        n = r.randint(2, 20)
        bad = r.choice([(0, n), (5, 5), (6, 3), (-1, n), (1, n + 1), (1, 2**31 - 1), (-(2**31), 2)])
        spans = [pb.VersionSpan(policy_version=0, start=bad[0], end=bad[1])]
        if r.random() < 0.3:
            spans = [pb.VersionSpan(policy_version=0, start=1, end=n), pb.VersionSpan(policy_version=1, start=1, end=2)]
        if r.random() < 0.1:
            spans = [pb.VersionSpan(policy_version=0, start=1, end=2)] * (n + 1)
        method = r.choice(["Score", "SubmitSegments"])
        seqs = [pb.Sequence(token_ids=self.tokens(n), spans=spans)]
        return method, self.score(seqs) if method == "Score" else pb.SubmitSegmentsRequest(segments=seqs)

    def _ids(self):
        pb, r = self.pb, self.rng
        n = r.randint(2, 20)
        bad = r.choice([-1, VOCAB, VOCAB + 1, 2**31 - 1, -(2**31)])
        seqs = [pb.Sequence(token_ids=self.tokens(n, bad), spans=[pb.VersionSpan(policy_version=0, start=1, end=n)])]
        method = r.choice(["Score", "SubmitSegments"])
        return method, self.score(seqs) if method == "Score" else pb.SubmitSegmentsRequest(segments=seqs)

    def _versions(self):
        pb, r = self.pb, self.rng
        v = r.choice([-1, 2, 7, 10**6, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63)])
        kind = r.randrange(6)
        if kind == 0:
            n = r.randint(2, 20)
            return "Score", self.score([pb.Sequence(token_ids=self.tokens(n), spans=[pb.VersionSpan(policy_version=v, start=1, end=n)])])
        if kind == 1:
            return "PublishVersion", pb.PublishVersionRequest(policy_version=v, snapshot_path="v00000000")
        if kind == 2:
            return "LeaseVersions", pb.LeaseVersionsRequest(policy_versions=[v], holder="fuzz", ttl_s=5)
        if kind == 3:
            return "Barrier", pb.BarrierRequest(policy_version=v)
        if kind == 4:
            return "GetVersion", pb.GetVersionRequest(policy_version=v)
        n = r.randint(2, 20)
        return "SubmitSegments", pb.SubmitSegmentsRequest(
            segments=[pb.Sequence(token_ids=self.tokens(n), spans=[pb.VersionSpan(policy_version=v, start=1, end=n)])]
        )

    def _bytes(self):
        r = self.rng
        method, message = r.choice([self._lengths, self._versions, self._fields])()
        data = bytearray(message.SerializeToString() if not isinstance(message, bytes) else message)
        choice = r.randrange(4)
        if choice == 0 and data:
            for _ in range(r.randint(1, 8)):
                data[r.randrange(len(data))] = r.randrange(256)
        elif choice == 1 and data:
            data = data[: r.randrange(len(data))]
        elif choice == 2:
            data += bytes(r.randrange(256) for _ in range(r.randint(1, 64)))
        else:
            data = bytearray(r.randrange(256) for _ in range(r.randint(0, 256)))
        return method, bytes(data)

    def _fields(self):
        pb, r = self.pb, self.rng
        s = self.odd_string()
        kind = r.randrange(6)
        if kind == 0:
            return "PublishVersion", pb.PublishVersionRequest(policy_version=r.randint(0, 3), snapshot_path=s)
        if kind == 1:
            return "LeaseVersions", pb.LeaseVersionsRequest(policy_versions=[0], holder=s, ttl_s=r.choice([5, 0, -1, float("nan"), 1e12]))
        if kind == 2:
            return "LeaseVersions", pb.LeaseVersionsRequest(policy_versions=[0], holder=s, release=True)
        if kind == 3:
            n = r.randint(2, 10)
            return "Score", self.score([pb.Sequence(token_ids=self.tokens(n), sample_id=s, spans=[pb.VersionSpan(policy_version=0, start=1, end=n)])], request_id=s)
        if kind == 4:
            return "ListVersions", pb.ListVersionsRequest(include_evicted=r.random() < 0.5)
        n = r.randint(2, 10)
        return "SubmitSegments", pb.SubmitSegmentsRequest(
            segments=[pb.Sequence(token_ids=self.tokens(n), sample_id=s, spans=[pb.VersionSpan(policy_version=0, start=1, end=n)])]
        )

    def _temperature(self):
        t = self.rng.choice([0.0, -1.0, float("nan"), float("inf"), float("-inf"), 1e-45, 1e300, 1e-3, 2.0])
        if self.rng.random() < 0.5:
            return "Score", self.score(temperature=t)
        n = self.rng.randint(2, 10)
        seg = self.pb.Sequence(token_ids=self.tokens(n), spans=[self.pb.VersionSpan(policy_version=0, start=1, end=n)])
        return "SubmitSegments", self.pb.SubmitSegmentsRequest(segments=[seg], temperature=t)

    def _oversized(self):
        pb, r = self.pb, self.rng
        if r.random() < 0.5:
            seqs = [pb.Sequence(token_ids=self.tokens(3), spans=[pb.VersionSpan(policy_version=0, start=1, end=3)])] * r.randint(65, 500)
        else:
            n = r.randint(8193, 20000)
            seqs = [pb.Sequence(token_ids=self.tokens(n), spans=[pb.VersionSpan(policy_version=0, start=1, end=n)])]
        method = r.choice(["Score", "SubmitSegments"])
        return method, self.score(seqs) if method == "Score" else pb.SubmitSegmentsRequest(segments=seqs)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import grpc
    import torch

    from logit_service.demo.tiny_model import build_tiny_model
    from logit_service.snapshots.writer import write_snapshot

    with tempfile.TemporaryDirectory(prefix="fuzz-wire-") as tmp:
        snapshot_dir = Path(tmp) / "snapshots"
        model = build_tiny_model(seed=0, vocab_size=VOCAB, hidden_size=32, layers=1)
        for version in range(2):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.01 * torch.randn_like(p))
            write_snapshot(snapshot_dir, version, model.state_dict(), model.config.to_dict())
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        process = start_server(snapshot_dir, port, Path(tmp) / "server.log")
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.enable_retries", 0)])
        grpc.channel_ready_future(channel).result(timeout=120)
        calls = {}

        def call(method: str, data: bytes):
            if method not in calls:
                calls[method] = channel.unary_unary(SERVICE + method, request_serializer=None, response_deserializer=None)
            return calls[method](data, timeout=CASE_TIMEOUT_S)

        maker = CaseMaker(args.seed, snapshot_dir)
        warm = maker.score()  # builds the model before memory is measured
        call("Score", warm.SerializeToString())
        rss_before = rss_bytes(process.pid)
        statuses: collections.Counter[str] = collections.Counter()
        by_family: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        bad_examples: list[dict] = []
        started = time.monotonic()
        crashed = False
        for index in range(args.cases):
            method, data, family = maker.make(index)
            try:
                call(method, data)
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
            if process.poll() is not None:
                crashed = True
                statuses["CRASH"] += 1
                break
            statuses[code] += 1
            by_family[family][code] += 1
            if code in ("INTERNAL", "UNKNOWN", "DEADLINE_EXCEEDED") and len(bad_examples) < 20:
                bad_examples.append({"family": family, "method": method, "status": code, "bytes": data[:200].hex()})
        elapsed = time.monotonic() - started
        health = grpc.channel_ready_future(channel).result(timeout=10) is None and not crashed
        rss_after = rss_bytes(process.pid) if not crashed else 0
        channel.close()
        process.terminate()
        process.wait(timeout=60)

    results = {
        "cases": sum(statuses.values()),
        "seconds": round(elapsed, 2),
        "statuses": dict(statuses.most_common()),
        "by_family": {f: dict(c.most_common()) for f, c in sorted(by_family.items())},
        "internal_or_unknown": statuses["INTERNAL"] + statuses["UNKNOWN"],
        "hangs": statuses["DEADLINE_EXCEEDED"],
        "crashes": int(crashed),
        "healthy_after": bool(health),
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_after,
        "bad_examples": bad_examples,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{results['cases']} cases in {elapsed:.1f} s")
    for code, count in statuses.most_common():
        print(f"  {code:<20} {count:>6}")
    print(f"INTERNAL/UNKNOWN {results['internal_or_unknown']}, hangs {results['hangs']}, crashes {results['crashes']}, "
          f"RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB")
    ok = results["internal_or_unknown"] == 0 and results["hangs"] == 0 and not crashed
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

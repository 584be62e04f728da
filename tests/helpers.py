"""Helpers shared by tests: the trained tiny-model versions, random token sequences, bounded waits."""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from logit_service.demo.tiny_model import build_tiny_model, reference_logprobs
from logit_service.snapshots.writer import write_snapshot

VOCAB = 256
METRICS_REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
NUM_VERSIONS = 5


@dataclass
class TrainedVersions:
    """State dicts of versions 0..n-1 of one model, each after a real optimiser step."""

    config: dict
    states: list[dict[str, torch.Tensor]]

    def model_at(self, version: int) -> torch.nn.Module:
        model = build_tiny_model(vocab_size=VOCAB)
        model.load_state_dict(self.states[version])
        return model.eval()

    def reference(self, version: int, token_ids, temperature: float = 1.0) -> np.ndarray:
        return reference_logprobs(self.model_at(version), token_ids, temperature).numpy()

    def write(self, root: Path, version: int) -> Path:
        return write_snapshot(root, version, self.states[version], self.config)


def distinct_versions(count: int) -> tuple[dict, list[dict[str, torch.Tensor]]]:
    """The config and the state dicts of `count` tiny models of one architecture, each of its own random
    weights (no training): versions for tests of the snapshot directory, not of the numbers served."""
    models = [build_tiny_model(seed=v, vocab_size=VOCAB, hidden_size=32, layers=1) for v in range(count)]
    return models[0].config.to_dict(), [{k: t.detach().clone() for k, t in m.state_dict().items()} for m in models]


def flip_last_byte(path: Path) -> None:
    """Changes a file after it was published, so a verified read of it must refuse it."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def wait_for(condition, what: str, timeout_s: float = 30.0):
    """Polls `condition` until it returns something true, and returns that; fails after `timeout_s`
    (a bound for a loaded machine only: the wait ends on the condition)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


GATE_HOLD_S = 120  # how long a held forward waits for its release at most: a bound for a loaded machine


class ForwardGate:
    """Holds the first `holds` forwards of the served model inside its first layer, each until its own
    release, so calls sent meanwhile queue behind it; `entered` and `release` are the first forward's,
    `entries` and `releases` every held forward's."""

    def __init__(self, server, holds: int = 1) -> None:
        self.entries = [threading.Event() for _ in range(holds)]
        self.releases = [threading.Event() for _ in range(holds)]
        self.entered, self.release = self.entries[0], self.releases[0]
        self._forwards = 0  # counted on the one compute thread
        layer = server.running.engine.backend.model.model.layers[0]
        self._handle = layer.register_forward_pre_hook(self._hold)

    def _hold(self, _module, _args) -> None:
        n, self._forwards = self._forwards, self._forwards + 1
        if n < len(self.entries):
            self.entries[n].set()
            self.releases[n].wait(GATE_HOLD_S)

    def remove(self) -> None:
        for release in self.releases:
            release.set()
        self._handle.remove()


def random_tokens(length: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=length).astype(np.int64)


def scrape_metrics(server) -> dict[str, float]:
    """Every sample of a running server's /metrics, scraped over real HTTP: name{labels} -> value."""
    port = server.running.metrics_port
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def documented_metrics() -> list[tuple[str, str, str]]:
    """(name as scraped, type, meaning) of every metric `docs/metrics.md` lists, in its order."""
    rows = re.findall(r"^\| `([a-z_]+)` \| ([a-z]+) \| (.+) \|$", METRICS_REFERENCE.read_text(), re.M)
    return [(name, kind, meaning.replace("\\|", "|")) for name, kind, meaning in rows]

"""Helpers shared by tests: the trained tiny-model versions and random token sequences."""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from logit_service.demo.tiny_model import build_tiny_model, reference_logprobs
from logit_service.snapshots.writer import write_snapshot

VOCAB = 256
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

"""Shared fixtures: a tiny model trained for real across several versions, and real servers on 127.0.0.1."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from logit_service.config import ServerConfig
from logit_service.demo.tiny_model import build_tiny_model, sgd_step
from logit_service.server.app import ServerThread
from tests.helpers import NUM_VERSIONS, VOCAB, TrainedVersions

# LOGIT_TEST_COMPACT_SNAPSHOTS=1 runs every server of the suite with compact snapshots (keyframes every
# 4 versions), so any test file can be rerun on that storage: the answers must not change.
COMPACT_BY_DEFAULT = os.environ.get("LOGIT_TEST_COMPACT_SNAPSHOTS") == "1"

@pytest.fixture(scope="session")
def trained() -> TrainedVersions:
    model = build_tiny_model(seed=0, vocab_size=VOCAB)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(1)
    states = []
    for _ in range(NUM_VERSIONS):
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        sgd_step(model, optimizer, torch.randint(0, VOCAB, (4, 48), generator=generator))
    return TrainedVersions(config=model.config.to_dict(), states=states)


@pytest.fixture
def make_server(tmp_path):
    """Starts real servers (gRPC on 127.0.0.1, OS-chosen port); stops them all at the end."""
    started: list[ServerThread] = []

    def start(snapshot_dir: Path | None = None, registry=None, **overrides) -> ServerThread:
        if COMPACT_BY_DEFAULT:
            overrides.setdefault("compact_snapshots", True)
            overrides.setdefault("compact_keyframe_interval", 4)
        overrides.setdefault("grace_s", 0.5)  # a test's calls still in flight at its end need no more
        config = ServerConfig(snapshot_dir=snapshot_dir or tmp_path / "snapshots", port=0, **overrides)
        server = ServerThread(config, registry=registry).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def snapshot_dir(tmp_path) -> Path:
    path = tmp_path / "snapshots"
    path.mkdir()
    return path

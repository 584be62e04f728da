"""The EWMA pseudo-version on disk: what a fold writes, what a restart resumes, and what it refuses.

A real SnapshotStore over real safetensors files; the registry is the in-process one (these tests are
of the snapshot directory, not of a registry's behaviour).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from logit_service.registry.memory import InMemoryRegistry
from logit_service.snapshots.ewma_track import EWMA_DIR_PREFIX, SUMS_NAME, EwmaTrack
from logit_service.snapshots.manifest import MANIFEST_NAME, read_manifest
from logit_service.snapshots.store import SnapshotStore
from logit_service.snapshots.writer import write_snapshot
from tests.helpers import distinct_versions

BETA = 0.5


@pytest.fixture(scope="module")
def states() -> tuple[dict, list[dict]]:
    return distinct_versions(3)


def _store(root: Path) -> SnapshotStore:
    return SnapshotStore(root, InMemoryRegistry(), retention_window=3, cache_bytes=1 << 30)


def _folded(root: Path, states, count: int) -> SnapshotStore:
    config, weights = states
    store = _store(root)
    track = EwmaTrack(store, beta=BETA)
    for v in range(count):
        record, _ = store.publish(v, write_snapshot(root, v, weights[v], config))
        track.fold(record)
    return store


def _ewma_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob(EWMA_DIR_PREFIX + "*"))


def test_a_fold_writes_an_ewma_snapshot_that_says_what_it_is_and_replaces_the_older_one(tmp_path, states):
    root = tmp_path / "snapshots"
    _folded(root, states, 3)

    assert _ewma_dirs(root) == ["ewma-v00000002"]  # the folds of versions 0 and 1 were removed
    manifest = read_manifest(root / "ewma-v00000002")
    assert manifest.kind == "ewma" and manifest.policy_version == 2
    assert manifest.extra["beta"] == BETA and manifest.extra["folded_versions"] == [0, 1, 2]
    assert SUMS_NAME in manifest.files


def test_a_restart_resumes_the_average_and_a_damaged_one_is_named(tmp_path, states, caplog):
    root = tmp_path / "snapshots"
    _folded(root, states, 2)
    assert EwmaTrack(_store(root), beta=BETA).folded_versions == [0, 1]  # resumed from disk

    (root / "ewma-v00000001" / SUMS_NAME).write_bytes(b"not the sums")
    with caplog.at_level(logging.WARNING, logger="logit_service.snapshots.ewma_track"):
        assert EwmaTrack(_store(root), beta=BETA).folded_versions == []  # rebuilt, never served damaged
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(f"cannot resume EWMA from {root / 'ewma-v00000001'}: ")


def test_an_average_of_another_beta_is_not_resumed_and_says_why(tmp_path, states, caplog):
    root = tmp_path / "snapshots"
    _folded(root, states, 2)
    with caplog.at_level(logging.WARNING, logger="logit_service.snapshots.ewma_track"):
        assert EwmaTrack(_store(root), beta=0.9).folded_versions == []
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == f"EWMA at {root / 'ewma-v00000001'} uses β=0.5, this server β=0.9; starting a new average"
    assert (root / "ewma-v00000001" / MANIFEST_NAME).exists()  # left as it was: another server may use it

"""Publishing without a shared disk: a snapshot streamed to a replica in the UploadVersion call itself.

The weights files go as their compact difference (logit_common.snapshots.compact) from a version the
replica already holds, when the caller has that version's snapshot locally and the replica reports the
same digest for it; otherwise as full files. Either way the replica verifies every byte before it
registers anything.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from logit_common.snapshots.manifest import (
    MANIFEST_NAME,
    Manifest,
    parse_snapshot_dirname,
    read_manifest,
    snapshot_dirname,
)
from logit_common.snapshots.stream import CHUNK_BYTES, OutgoingFile, snapshot_messages
from logit_common.v1 import logit_service_pb2 as pb


@dataclass(frozen=True)
class UploadPlan:
    """What one upload sends: the snapshot's manifest, its files as sent, and the base of the differences."""

    policy_version: int
    manifest_json: bytes
    files: list[OutgoingFile]
    base_version: int | None

    @property
    def bytes_sent(self) -> int:
        return len(self.manifest_json) + sum(f.size for f in self.files)

    def messages(self, chunk_bytes: int = CHUNK_BYTES) -> Iterator[pb.SnapshotChunk]:
        return snapshot_messages(
            self.policy_version, self.manifest_json, self.files, base_version=self.base_version, chunk_bytes=chunk_bytes
        )


def snapshot_dir_of(
    policy_version: int, weights: Any, work_dir: str | Path | None, model_config: Mapping[str, Any] | None
) -> tuple[Path, Callable[[], None]]:
    """The local snapshot directory to send, and how to clean up after: `weights` itself when it is a
    directory, else a snapshot written under `work_dir` (kept, so it can be the next upload's base) or
    under a temporary directory (removed)."""
    if isinstance(weights, (str, Path)):
        return Path(weights), lambda: None
    from .publish import write_snapshot_files

    if work_dir is not None:
        return write_snapshot_files(policy_version, weights, work_dir, model_config), lambda: None
    scratch = tempfile.TemporaryDirectory(prefix="logit-upload-")
    return write_snapshot_files(policy_version, weights, scratch.name, model_config), scratch.cleanup


def newest_base_below(snapshot_dir: Path) -> Path | None:
    """The newest snapshot directory beside `snapshot_dir` of a lower version: the likely neighbour."""
    version = parse_snapshot_dirname(snapshot_dir.name)
    if version is None:
        return None
    older = [
        (v, p) for p in snapshot_dir.parent.iterdir()
        if (v := parse_snapshot_dirname(p.name)) is not None and v < version and (p / MANIFEST_NAME).is_file()
    ]
    return max(older)[1] if older else None


def plan_upload(snapshot_dir: Path, base_dir: Path | None) -> UploadPlan:
    """Full files, or, with `base_dir` (a snapshot the receiver holds), weights files of the same size
    there as differences from it; any other file goes full."""
    manifest = read_manifest(snapshot_dir)
    raw = (snapshot_dir / MANIFEST_NAME).read_bytes()
    base_manifest = read_manifest(base_dir) if base_dir is not None else None
    files = []
    any_compact = False
    for name, sha256 in sorted(manifest.files.items()):
        delta = _difference(snapshot_dir, name, sha256, base_dir, base_manifest) if base_manifest else None
        if delta is None:
            files.append(OutgoingFile.from_path(name, snapshot_dir / name, sha256))
        else:
            files.append(OutgoingFile.from_bytes(name, delta, compact=True))
            any_compact = True
    base_version = base_manifest.policy_version if any_compact and base_manifest is not None else None
    return UploadPlan(manifest.policy_version, raw, files, base_version)


def _difference(snapshot_dir: Path, name: str, sha256: str, base_dir: Path, base_manifest: Manifest) -> bytes | None:
    """The compact difference of one weights file from the base's file of that name, or None."""
    import numpy as np
    from logit_common.snapshots.compact import encode_delta

    if not (name.startswith("model") and name.endswith(".safetensors")) or name not in base_manifest.files:
        return None
    base_path, path = base_dir / name, snapshot_dir / name
    if not base_path.is_file() or base_path.stat().st_size != path.stat().st_size:
        return None
    target = np.fromfile(path, dtype=np.uint8)
    base = np.fromfile(base_path, dtype=np.uint8)
    if hashlib.sha256(base).hexdigest() != base_manifest.files[name]:
        return None  # the local base is not what its manifest says: the receiver could not restore it
    return encode_delta(
        target, base, base_dirname=snapshot_dirname(base_manifest.policy_version),
        base_sha256=base_manifest.files[name], sha256=sha256,
    )  # fmt: skip

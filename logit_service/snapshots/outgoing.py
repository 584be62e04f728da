"""A stored version as the files FetchVersion streams to a peer: always full files, restored from
their compact form where this replica keeps one (the peer may hold no base to restore against)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from logit_common.snapshots.stream import MAX_MANIFEST_BYTES, OutgoingFile

from logit_service.errors import SnapshotCorrupt, VersionNotFound
from logit_service.snapshots.loader import read_weights_file
from logit_service.snapshots.manifest import (
    MANIFEST_NAME,
    open_snapshot_file,
    read_bounded,
    read_manifest,
    stored_file,
)

if TYPE_CHECKING:
    from logit_service.snapshots.store import SnapshotStore


def stored_snapshot(store: SnapshotStore, policy_version: int) -> tuple[bytes, list[OutgoingFile]]:
    """(manifest.json's bytes, the files in sorted order) of a retained version held on this disk.

    NOT_FOUND when this replica does not hold it; DATA_LOSS when what it holds is not what was registered.
    Full files are read as the stream goes (the receiver checks their sha256); compact ones are restored
    and verified here."""
    record = store.resolve(policy_version)
    path = store.path_of(record)
    if not (path / MANIFEST_NAME).exists():
        raise VersionNotFound(f"version {policy_version} is registered, but this replica does not hold its files")
    manifest = read_manifest(path)
    if manifest.digest != record.digest:
        raise SnapshotCorrupt(f"{path.name}: its manifest changed since version {policy_version} was published")
    with open_snapshot_file(path / MANIFEST_NAME) as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_MANIFEST_BYTES:
            raise SnapshotCorrupt(f"{path.name}/{MANIFEST_NAME} holds {size} bytes, over the manifest limit")
        raw = read_bounded(f, size, path / MANIFEST_NAME)
    files = []
    for name, sha256 in sorted(manifest.files.items()):
        if stored_file(path, name).name == name:
            files.append(OutgoingFile.from_path(name, path / name, sha256))
        else:
            restored = read_weights_file(path / name, sha256, store.cached_file)
            files.append(OutgoingFile(name=name, sha256=sha256, size=restored.numel(), data=memoryview(restored.numpy())))
    return raw, files

"""Which retained versions are stored compact, and the switches between the two forms on disk.

A version is compacted once a newer version is retained: its weights file becomes its delta from the
next retained version (compact.py). Every `keyframe_interval`-th version (by number) and the newest
stay full, so a restore follows a short chain and the newest version, the one an inference engine
loads, is always a plain Hugging Face directory. `materialise` turns any version back into one.

Every switch keeps one complete form on disk at every moment: the new form is written aside, fsync'd
and checked bit for bit against the version's manifest before it is renamed in, and only then is the
old form removed. A kill at any point leaves a servable snapshot, at worst in both forms.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from logit_service.errors import LogitServiceError, SnapshotCorrupt
from logit_service.snapshots.compact import (
    apply_delta,
    compact_name,
    encode_delta,
    read_delta,
    sha256_of,
)
from logit_service.snapshots.loader import (
    read_verified_buffer,
    read_weights_file,
    restore_compact,
    weights_file_names,
)
from logit_service.snapshots.manifest import (
    fsync_dir,
    read_manifest,
    snapshot_file_name,
)
from logit_service.tensor_threads import serial_tensor_ops
from logit_service.types import VersionRecord

if TYPE_CHECKING:
    from logit_service.snapshots.store import SnapshotStore

log = logging.getLogger(__name__)

FILE_MODE = 0o644


def _write_aside(root: Path, data) -> Path:
    """A file with `data` in the snapshot root under a `.tmp-` name (removed by recovery if left)."""
    tmp = root / f".tmp-compact-{uuid.uuid4().hex}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, FILE_MODE)  # readable by replicas running as other users, whatever the umask
    return tmp


def is_compact(path: Path, manifest) -> bool:
    return any(not (path / n).exists() and (path / compact_name(n)).exists() for n in weights_file_names(manifest))


def compact_bases(path: Path, manifest) -> set[str]:
    """Directory names the compact files of a snapshot are deltas from."""
    bases = set()
    for name in weights_file_names(manifest):
        try:
            header, _ = read_delta(path / compact_name(name))
        except FileNotFoundError:
            continue
        bases.add(header.base)
    return bases


def compact_version(store: "SnapshotStore", record: VersionRecord, base_record: VersionRecord) -> int:
    """Stores `record`'s weights as deltas from `base_record` (a newer version); returns the bytes saved
    (0 when nothing was compacted: already compact, or files that differ in size)."""
    path, base_path = store.path_of(record), store.path_of(base_record)
    manifest, base_manifest = read_manifest(path), read_manifest(base_path)
    if manifest.digest != record.digest or base_manifest.digest != base_record.digest:
        raise SnapshotCorrupt(f"{path.name} or {base_path.name}: a manifest changed since it was published")
    saved = 0
    for name in weights_file_names(manifest):
        full = path / name
        if not full.exists() or name not in base_manifest.files:
            continue
        target = read_verified_buffer(full, manifest.files[name])  # never compact bytes that do not verify
        base = read_weights_file(base_path / name, base_manifest.files[name], store.cached_file)
        if target.numel() != base.numel():
            log.info("not compacting %s: %d bytes against %d in %s", snapshot_file_name(full), target.numel(), base.numel(), base_path.name)
            continue
        blob = encode_delta(target.numpy(), base.numpy(), base_dirname=base_path.name,
                            base_sha256=base_manifest.files[name], sha256=manifest.files[name])  # fmt: skip
        del target
        tmp = _write_aside(store.root, blob)
        try:
            # Read back from disk and restore against the base as loading will: nothing is removed
            # unless the compact file on disk gives back exactly the manifest's bytes.
            zpath = path / compact_name(name)
            if not _restores(tmp, zpath, base, manifest.files[name]):
                raise SnapshotCorrupt(f"{snapshot_file_name(zpath)}: the delta written does not restore its version")
            with store.lock:
                if not path.is_dir() or not (base_path / name).exists() and not (base_path / compact_name(name)).exists():
                    return saved  # evicted meanwhile: leave it to retention
                os.rename(tmp, zpath)
                fsync_dir(path)
                full_size = full.stat().st_size
                full.unlink()
                fsync_dir(path)
            saved += full_size - len(blob)
        finally:
            tmp.unlink(missing_ok=True)
    if saved:
        log.info("compacted %s as a delta from %s (%d bytes saved)", path.name, base_path.name, saved)
    return saved


def _restores(tmp: Path, zpath: Path, base, expected_sha256: str) -> bool:
    """Whether the compact file at `tmp` restores `expected_sha256` from `base`, read as a load reads it."""
    import torch

    header, data = read_delta(tmp)
    if header.sha256 != expected_sha256:
        return False
    out = torch.empty(base.numel(), dtype=torch.uint8)
    digest = hashlib.sha256()
    apply_delta(header, data, base.numpy(), out.numpy(), zpath, digest=digest)
    return digest.hexdigest() == expected_sha256


def materialise(store: "SnapshotStore", record: VersionRecord) -> Path:
    """Makes `record`'s snapshot a plain Hugging Face directory again (full weights files); returns it."""
    path = store.path_of(record)
    manifest = read_manifest(path)
    if manifest.digest != record.digest:
        raise SnapshotCorrupt(f"{path.name}: its manifest changed since version {record.policy_version} was published")
    for name in weights_file_names(manifest):
        zpath = path / compact_name(name)
        if (path / name).exists() or not zpath.exists():
            continue
        buffer = restore_compact(path / name, manifest.files[name], store.cached_file)  # verified
        tmp = _write_aside(store.root, memoryview(buffer.numpy()))
        try:
            if sha256_of(_reread(tmp)) != manifest.files[name]:
                raise SnapshotCorrupt(f"{snapshot_file_name(path / name)}: the file written does not match its manifest")
            with store.lock:
                os.rename(tmp, path / name)
                fsync_dir(path)
                zpath.unlink(missing_ok=True)
                fsync_dir(path)
        finally:
            tmp.unlink(missing_ok=True)
        log.info("materialised %s (full weights file restored from its delta)", snapshot_file_name(path / name))
    return path


def _reread(path: Path):
    import numpy as np

    return np.fromfile(path, dtype=np.uint8)


class Compactor:
    """Compacts retained versions in a background thread, one pass per request (publish, scan, start)."""

    def __init__(self, store: "SnapshotStore", *, keyframe_interval: int) -> None:
        if keyframe_interval < 1:
            raise ValueError(f"keyframe_interval must be >= 1, got {keyframe_interval}")
        self.store = store
        self.keyframe_interval = keyframe_interval
        self.bytes_saved = 0
        self.compacted = 0
        self.failures = 0
        self._wanted = threading.Event()
        self._idle = threading.Condition()
        self._busy = False
        self._stopped = False
        self._thread: threading.Thread | None = None

    def is_keyframe(self, policy_version: int) -> bool:
        return policy_version % self.keyframe_interval == 0

    def start(self) -> "Compactor":
        self._thread = threading.Thread(target=self._loop, name="logit-compactor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped = True
        self._wanted.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def request(self) -> None:
        with self._idle:  # both under the lock, so the loop never reports idle with a request pending
            self._busy = True
            self._wanted.set()

    def wait_idle(self, timeout_s: float = 60.0) -> bool:
        """Waits until every requested pass has run; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._busy, timeout=timeout_s)

    def _loop(self) -> None:
        serial_tensor_ops()  # the forwards' OpenMP team stays the process's only one (tensor_threads.py)
        while not self._stopped:
            self._wanted.wait()
            self._wanted.clear()
            if self._stopped:
                break
            try:
                self.run_once()
            except Exception:  # broad: a failed pass must not end compaction for the life of the server
                log.exception("snapshot compaction pass failed")
            with self._idle:
                if not self._wanted.is_set():
                    self._busy = False
                    self._idle.notify_all()

    def candidates(self) -> list[tuple[VersionRecord, VersionRecord]]:
        """(version, its newer neighbour) pairs to compact: retained, not a keyframe, not the newest."""
        records = sorted(self.store.retained(), key=lambda r: r.policy_version)
        return [
            (record, newer)
            for record, newer in zip(records, records[1:])
            if not self.is_keyframe(record.policy_version)
        ]

    def run_once(self) -> list[int]:
        done = []
        for record, newer in self.candidates():
            if self._stopped:
                break
            path = self.store.path_of(record)
            try:
                manifest = read_manifest(path)
                if all(not (path / n).exists() for n in weights_file_names(manifest)):
                    continue  # already compact
                saved = compact_version(self.store, record, newer)
            except LogitServiceError as e:
                self.failures += 1
                log.warning("not compacting version %d: %s", record.policy_version, e.message)
                continue
            except OSError as e:
                self.failures += 1
                log.warning("not compacting version %d: %s", record.policy_version, e)
                continue
            if saved:
                self.bytes_saved += saved
                self.compacted += 1
                done.append(record.policy_version)
        return done

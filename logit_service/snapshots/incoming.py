"""Receiving a streamed snapshot (UploadVersion, or a copy fetched from a peer) into the snapshot dir.

Bytes land in a private `.tmp-upload-*` staging directory inside the snapshot dir (recovery removes
one a killed process left). Each file is hashed as it arrives; a compact difference is restored
against the base version this replica holds and must hash to the manifest's sha256. Only a fully
verified snapshot is renamed into place, atomically, under its version's name. It does not register
anything: the caller does, through the store's publish, and removes what it installed if that fails.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from logit_common.snapshots.stream import CHUNK_BYTES, MAX_MANIFEST_BYTES

from logit_service.errors import (
    InvalidRequest,
    RequestTooLarge,
    SnapshotCorrupt,
    VersionConflict,
)
from logit_service.snapshots.compact import apply_delta, read_delta
from logit_service.snapshots.buffers import fresh_byte_buffer
from logit_service.snapshots.loader import read_weights_file, weights_file_names
from logit_service.snapshots.manifest import (
    COMPACT_SUFFIX,
    MANIFEST_NAME,
    MAX_POLICY_VERSION,
    Manifest,
    fsync_dir,
    parse_manifest,
    read_manifest,
    snapshot_dirname,
)
from logit_service.snapshots.store import TMP_PREFIX
from logit_service.tensor_threads import serial_tensor_ops

if TYPE_CHECKING:
    from logit_service.snapshots.store import SnapshotStore
    from logit_service.v1 import logit_service_pb2 as pb

FILE_MODE = 0o644
DIR_MODE = 0o755
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_HASHES_IN_FLIGHT = 8
"""Chunks written but not yet hashed (at most 1 MiB each)."""


class IncomingSnapshot:
    """One snapshot arriving as a header and data chunks. Every method is blocking (run it off the
    event loop); `discard` may be called from any thread at any time and wins over a write in flight."""

    def __init__(self, store: SnapshotStore, *, max_bytes: int) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.dir = store.root / f"{TMP_PREFIX}upload-{uuid.uuid4().hex}"
        self._lock = threading.Lock()
        self._closed = False
        self.manifest: Manifest | None = None
        self.policy_version: int | None = None
        self.base_version: int | None = None
        self._files: list[pb.SnapshotFile] = []
        self._index = -1  # the file being received
        self._out: BinaryIO | None = None
        self._received = 0
        self._hash = hashlib.sha256()
        # Hashing runs on a thread of its own, in arrival order, beside the writes (both release the
        # GIL): a transfer then costs the slower of the two per byte, not their sum.
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="logit-upload-hash", initializer=serial_tensor_ops)
        self._hashing: deque[Future] = deque()
        self.bytes_received = 0

    def take(self, message: pb.SnapshotChunk) -> None:
        """One streamed message: the header or a data chunk."""
        part = message.WhichOneof("part")
        if part == "header":
            self.start(message.header)
        elif part == "data":
            self.write(message.data)
        else:
            raise InvalidRequest("a SnapshotChunk carries neither a header nor data")

    # --- the header -------------------------------------------------------------------------------

    def start(self, header: pb.SnapshotHeader) -> None:
        if self.manifest is not None:
            raise InvalidRequest("a second header arrived; a stream carries exactly one, first")
        if not 0 <= header.policy_version <= MAX_POLICY_VERSION:
            raise InvalidRequest(f"policy_version must lie in [0, 2^63), got {header.policy_version}")
        raw = header.manifest_json
        if len(raw) > MAX_MANIFEST_BYTES:
            raise RequestTooLarge(
                f"the header's manifest holds {len(raw)} bytes; the limit is {MAX_MANIFEST_BYTES}",
                limit="max_manifest_bytes", limit_value=MAX_MANIFEST_BYTES, value=len(raw),
            )
        try:
            manifest, recorded = parse_manifest(raw, "the header's manifest")
        except SnapshotCorrupt as e:
            raise InvalidRequest(e.message) from None
        if recorded is None:
            raise InvalidRequest("the header's manifest records no digest; send manifest.json as written")
        if recorded != manifest.digest:
            raise SnapshotCorrupt("the header's manifest records a digest that does not match its file list")
        if manifest.kind != "version" or manifest.policy_version != header.policy_version:
            raise InvalidRequest(
                f"the header's manifest is {manifest.kind} {manifest.policy_version}, "
                f"but the stream publishes version {header.policy_version}"
            )
        names = [f.name for f in header.files]
        if names != sorted(manifest.files):
            raise InvalidRequest(
                f"the header lists files {names}; it must list the manifest's files {sorted(manifest.files)}, "
                "sorted by name, each once"
            )
        weights = set(weights_file_names(manifest))
        for f in header.files:
            if f.size < 0 or not _SHA256_HEX.match(f.sha256):
                raise InvalidRequest(f"file {f.name!r}: size must be >= 0 and sha256 64 lowercase hex digits")
            if f.compact and (not header.has_base or f.name not in weights):
                raise InvalidRequest(f"file {f.name!r} is sent compact, but only weights files with a base version may be")
            if not f.compact and f.sha256 != manifest.files[f.name]:
                raise InvalidRequest(f"file {f.name!r}: the header's sha256 is not the manifest's")
        total = len(raw) + sum(f.size for f in header.files)
        if total > self.max_bytes:
            raise RequestTooLarge(
                f"the snapshot of version {header.policy_version} holds {total} bytes; the limit is {self.max_bytes}",
                limit="max_upload_bytes", limit_value=self.max_bytes, value=total,
            )
        if header.has_base:
            if header.base_version == header.policy_version:
                raise InvalidRequest("a version cannot be sent as a difference from itself")
            self.store.resolve(header.base_version)  # NOT_FOUND / FAILED_PRECONDITION before any byte is written
            self.base_version = header.base_version
        with self._lock:
            self._check_open()
            self.dir.mkdir(mode=DIR_MODE)
            _write_file(self.dir / MANIFEST_NAME, raw)
        self.manifest, self.policy_version, self._files = manifest, header.policy_version, list(header.files)
        self.bytes_received = len(raw)

    # --- data -------------------------------------------------------------------------------------

    def write(self, data: pb.SnapshotData) -> None:
        if self.manifest is None:
            raise InvalidRequest("a data chunk arrived before the header")
        if len(data.data) > CHUNK_BYTES:
            raise InvalidRequest(f"a data chunk holds {len(data.data)} bytes; the limit is {CHUNK_BYTES}")
        if not self._index <= data.file_index < len(self._files):
            raise InvalidRequest(
                f"a chunk of file {data.file_index} arrived while file {self._index} was being received; "
                f"files arrive in the header's order, indices 0..{len(self._files) - 1}"
            )
        with self._lock:
            self._check_open()
            while self._index < data.file_index:
                self._next_file()
            f = self._files[self._index]
            if data.offset != self._received:
                raise InvalidRequest(
                    f"file {f.name!r}: a chunk at byte {data.offset} arrived after {self._received} bytes; "
                    "chunks arrive in order"
                )
            if self._received + len(data.data) > f.size:
                raise InvalidRequest(f"file {f.name!r}: more bytes arrived than the {f.size} the header announced")
            assert self._out is not None
            self._hashing.append(self._hasher.submit(self._hash.update, data.data))
            _write_all(self._out, data.data)
            while len(self._hashing) > _HASHES_IN_FLIGHT or (self._hashing and self._hashing[0].done()):
                self._hashing.popleft().result()
            self._received += len(data.data)
            self.bytes_received += len(data.data)

    def _next_file(self) -> None:
        """Closes the file being received (which must be complete and verified) and opens the next."""
        self._close_file()
        self._index += 1
        f = self._files[self._index]
        # Unbuffered: what arrived is on disk, so a staging directory shows how far a transfer got.
        self._out = open(self.dir / _staged_name(f), "xb", buffering=0)  # noqa: SIM115  (open across chunks; closed by _close_file or discard)
        self._received, self._hash = 0, hashlib.sha256()

    def _close_file(self) -> None:
        if self._index < 0:
            return
        f = self._files[self._index]
        if self._out is not None:
            self._out.flush()
            os.fsync(self._out.fileno())
            self._out.close()
            self._out = None
        if self._received != f.size:
            raise InvalidRequest(f"file {f.name!r}: the stream moved on after {self._received} of its {f.size} bytes")
        while self._hashing:
            self._hashing.popleft().result()
        if self._hash.hexdigest() != f.sha256:
            raise SnapshotCorrupt(f"file {f.name!r}: the bytes received do not hash to the sha256 the header announced")

    # --- the end ----------------------------------------------------------------------------------

    def finish(self) -> Manifest:
        """Checks that every file arrived whole and verified, restores differences; returns the manifest."""
        if self.manifest is None:
            raise InvalidRequest("the stream ended before its header")
        with self._lock:
            self._check_open()
            while self._index < len(self._files) - 1:
                self._next_file()
            self._close_file()
        for f in self._files:
            if f.compact:
                self._restore(f)
        with self._lock:
            self._check_open()
            for name in (*self.manifest.files, MANIFEST_NAME):
                os.chmod(self.dir / name, FILE_MODE)
            fsync_dir(self.dir)
        return self.manifest

    def _restore(self, f: pb.SnapshotFile) -> None:
        """Turns a received difference into the full file, checked against the manifest's sha256."""
        import numpy as np

        assert self.manifest is not None and self.base_version is not None
        delta_path = self.dir / _staged_name(f)
        delta, blob = read_delta(delta_path)
        base_record = self.store.resolve(self.base_version)
        base_dir = self.store.path_of(base_record)
        base_manifest = read_manifest(base_dir)
        if base_manifest.digest != base_record.digest:
            raise SnapshotCorrupt(f"the base version {self.base_version}'s manifest changed since it was published")
        base_sha = base_manifest.files.get(f.name)
        if delta.base != snapshot_dirname(self.base_version) or delta.base_sha256 != base_sha:
            raise InvalidRequest(
                f"file {f.name!r} is a difference from {delta.base}, not from this replica's version {self.base_version}"
            )
        if delta.sha256 != self.manifest.files[f.name]:
            raise InvalidRequest(f"file {f.name!r}: the difference restores another file than the manifest lists")
        base = read_weights_file(base_dir / f.name, base_sha, self.store.cached_file).numpy()
        restored = fresh_byte_buffer(delta.size).numpy()
        digest = hashlib.sha256()
        apply_delta(delta, blob, base, restored, delta_path, digest=digest)
        if digest.hexdigest() != self.manifest.files[f.name]:
            raise SnapshotCorrupt(f"file {f.name!r}: the restored weights do not hash to the manifest's sha256")
        with self._lock:
            self._check_open()
            _write_file(self.dir / f.name, restored)
            delta_path.unlink()

    def install(self) -> tuple[Path, bool]:
        """Renames the verified snapshot into place; returns (its path, whether this call created it).

        The same snapshot already there is kept (and this copy dropped); other weights under that
        version's name raise VersionConflict and touch nothing."""
        assert self.manifest is not None and self.policy_version is not None
        final = self.store.root / snapshot_dirname(self.policy_version)
        with self._lock:
            self._check_open()
            try:
                os.rename(self.dir, final)
            except OSError:
                if not final.exists():
                    raise
            else:
                fsync_dir(self.store.root)
                self._closed = True
                self._hasher.shutdown(wait=False)
                return final, True
        existing = read_manifest(final)
        if existing.digest != self.manifest.digest:
            raise VersionConflict(
                f"this replica already holds other weights for version {self.policy_version} "
                f"(digest {existing.digest}); a version number names one set of weights"
            )
        return final, False

    def discard(self) -> None:
        """Removes the staging directory and everything in it; later writes fail."""
        with self._lock:
            self._closed = True
            if self._out is not None:
                self._out.close()
                self._out = None
            shutil.rmtree(self.dir, ignore_errors=True)
            self._hashing.clear()
            self._hasher.shutdown(wait=False, cancel_futures=True)

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidRequest("the transfer was abandoned")


def _staged_name(f: pb.SnapshotFile) -> str:
    return f.name + COMPACT_SUFFIX if f.compact else f.name


def _write_all(out: BinaryIO, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[out.write(view) :]


def _write_file(path: Path, data) -> None:
    with open(path, "xb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


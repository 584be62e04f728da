"""A snapshot as a stream of gRPC messages: the sequence UploadVersion takes and FetchVersion sends.

One header (the version, its manifest.json as written, the files that follow), then each file's bytes
in data chunks of at most CHUNK_BYTES, files one after another in the header's order. Shared by the
client (uploads) and the server (replica-to-replica copies); the receiving side is the server's
`snapshots/incoming.py`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from logit_common.snapshots.manifest import open_snapshot_file
from logit_common.v1 import logit_service_pb2 as pb

CHUNK_BYTES = 1 << 20
"""Most file bytes one message carries: far below any server's request limit, large enough that
per-message costs stay a small share of the transfer."""
MAX_MANIFEST_BYTES = 1 << 20
"""Most bytes of manifest.json a header may carry (a manifest lists a few files: a few KiB)."""


@dataclass(frozen=True)
class OutgoingFile:
    """One file of a streamed snapshot: read from `path`, or sent from `data` already in memory."""

    name: str
    sha256: str
    """Of the bytes as sent."""
    size: int
    compact: bool = False
    path: Path | None = None
    data: bytes | memoryview | None = None

    @classmethod
    def from_path(cls, name: str, path: Path, sha256: str) -> OutgoingFile:
        return cls(name=name, sha256=sha256, size=os.stat(path).st_size, path=Path(path))

    @classmethod
    def from_bytes(cls, name: str, data: bytes | memoryview, *, compact: bool = False) -> OutgoingFile:
        view = memoryview(data).cast("B")
        return cls(name=name, sha256=hashlib.sha256(view).hexdigest(), size=len(view), compact=compact, data=view)


def snapshot_messages(
    policy_version: int,
    manifest_json: bytes,
    files: list[OutgoingFile],
    *,
    base_version: int | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[pb.SnapshotChunk]:
    """The header, then every file's chunks. Files read from disk are read as the stream is consumed,
    one chunk at a time, so a large snapshot never sits in memory whole."""
    if not 0 < chunk_bytes <= CHUNK_BYTES:
        raise ValueError(f"chunk_bytes must lie in (0, {CHUNK_BYTES}], got {chunk_bytes}")
    header = pb.SnapshotHeader(
        policy_version=policy_version,
        manifest_json=manifest_json,
        files=[pb.SnapshotFile(name=f.name, size=f.size, sha256=f.sha256, compact=f.compact) for f in files],
        base_version=base_version or 0,
        has_base=base_version is not None,
    )
    yield pb.SnapshotChunk(header=header)
    for index, f in enumerate(files):
        for offset, block in _blocks(f, chunk_bytes):
            yield pb.SnapshotChunk(data=pb.SnapshotData(file_index=index, offset=offset, data=block))


def _blocks(f: OutgoingFile, chunk_bytes: int) -> Iterator[tuple[int, bytes]]:
    if f.data is not None:
        for offset in range(0, f.size, chunk_bytes):
            yield offset, bytes(f.data[offset : offset + chunk_bytes])
        return
    assert f.path is not None
    with open_snapshot_file(f.path) as stream:
        offset = 0
        while offset < f.size:
            block = stream.read(min(chunk_bytes, f.size - offset))
            if not block:
                break  # shorter than announced: the receiver refuses the stream
            yield offset, block
            offset += len(block)

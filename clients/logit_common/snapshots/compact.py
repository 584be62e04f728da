"""Compact snapshot files: a weights file stored as its lossless difference from a newer neighbour.

`model.safetensors` of version v becomes `model.safetensors.zdelta`: the XOR of its bytes with the same
file of a newer version (its *base*), in chunks, each chunk a Blosc buffer: its elements byte-shuffled
(all first bytes of the elements of a block, then all second bytes, ...) and compressed with zstd, block
by block. Between consecutive training steps the sign, exponent and high mantissa bits of most weights
do not change, so their byte planes are near-zero and compress away; only the low mantissa bits cost
space. XOR is byte-wise, so restoring is exact for any bytes whatever the dtype; the shuffle only helps
the compressor. Blosc's shuffle is SIMD code and works on cache-sized blocks, which is what makes a
compact load cheap: the same planes unshuffled by numpy's strided loops cost twice the decoding.

Deltas point to *newer* versions, so retention, which drops the oldest versions first, never drops
a base that a kept version still needs (a leased version outside the window is handled by the store).

Restoring is verified: the restored bytes must hash to the sha256 the version's manifest lists for the
full file, so a damaged delta, a damaged base or a wrong base all fail as SnapshotCorrupt, and the
manifest, its digest and every answer stamped with it stay exactly those of the full snapshot.

File layout: 8-byte magic, u64 little-endian header length, a JSON header, then the Blosc buffers in
the order of the header's chunks. numpy and numcodecs (which carries Blosc) are imported inside the
functions. The format is shared with the client (its `publish` extra), which uploads a version as such
a difference.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from logit_common.errors import SnapshotCorrupt
from logit_common.snapshots.manifest import (
    COMPACT_SUFFIX,
    open_snapshot_file,
    parse_snapshot_dirname,
    snapshot_file_name,
)
from logit_common.snapshots.pipeline import pread_exactly, run_in_order

if TYPE_CHECKING:
    import numpy as np

MAGIC = b"LGZDELT1"
CODEC = "xor-shuffle-blosc-zstd"
FORMAT = 2
"""Format 1 (byte planes of a whole chunk in one zstd frame) was never released; it is refused by name."""
CHUNK_BYTES = 16 << 20
"""Bytes of the file per Blosc buffer: buffers decode in parallel and are hashed in order behind them."""
BLOCK_BYTES = 1 << 20
"""Bytes per Blosc block, shuffled and compressed alone: 1 MiB compresses trained fp32 deltas as well as
a whole 16 MiB chunk does (measured) and stays in a core's cache while it is unshuffled; 256 KiB loses 8%."""
ZSTD_LEVEL = 1
"""Level 1: on deltas of trained weights it compresses as well as level 3 (measured) at a third of the time."""
_BLOSC_HEADER_BYTES = 16
MAX_HEADER_BYTES = 16 << 20
MAX_CHAIN = 64
"""Most deltas followed to reach a full file; the store keeps chains far shorter (keyframes)."""
_WIDTHS = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2}


def compact_name(name: str) -> str:
    return name + COMPACT_SUFFIX


@dataclass(frozen=True)
class Chunk:
    start: int
    end: int
    width: int
    offset: int  # of its frame in the .zdelta file
    length: int  # of its frame


@dataclass(frozen=True)
class DeltaHeader:
    base: str  # directory name of the base snapshot, a sibling: v<version>
    base_sha256: str
    sha256: str  # of the full file this delta restores
    size: int
    chunks: tuple[Chunk, ...]

    @property
    def base_version(self) -> int:
        version = parse_snapshot_dirname(self.base)
        assert version is not None  # checked when parsed
        return version


# --- planning and encoding ------------------------------------------------------------------------


def _segments(data: "np.ndarray") -> list[tuple[int, int, int]]:
    """(start, end, element width) runs covering a safetensors file: width 1 for the header and gaps."""
    size = len(data)
    try:
        header_len = int.from_bytes(data[:8].tobytes(), "little")
        header = json.loads(data[8 : 8 + header_len].tobytes())
        base = 8 + header_len
        regions = sorted(
            (base + info["data_offsets"][0], base + info["data_offsets"][1], _WIDTHS.get(info["dtype"], 1))
            for key, info in header.items()
            if key != "__metadata__"
        )
    except (ValueError, KeyError, TypeError, IndexError):
        return [(0, size, 1)]  # not a safetensors layout we read: XOR is exact for any bytes anyway
    out: list[tuple[int, int, int]] = []
    at = 0
    for start, end, width in regions:
        if start < at or end > size:
            return [(0, size, 1)]
        if start > at:
            out.append((at, start, 1))
        whole = start + (end - start) // width * width
        out.append((start, whole, width))
        if whole < end:
            out.append((whole, end, 1))
        at = end
    if at < size:
        out.append((at, size, 1))
    merged: list[tuple[int, int, int]] = []
    for start, end, width in out:
        if start == end:
            continue
        if merged and merged[-1][2] == width and merged[-1][1] == start:
            merged[-1] = (merged[-1][0], end, width)
        else:
            merged.append((start, end, width))
    return merged


def plan_chunks(data: "np.ndarray") -> list[tuple[int, int, int]]:
    """The (start, end, width) chunks a file is encoded in: at most CHUNK_BYTES each, whole elements."""
    chunks = []
    for start, end, width in _segments(data):
        step = CHUNK_BYTES // width * width
        for s in range(start, end, step):
            chunks.append((s, min(s + step, end), width))
    return chunks


def encode_delta(target: "np.ndarray", base: "np.ndarray", *, base_dirname: str, base_sha256: str, sha256: str) -> bytes:
    """The .zdelta file restoring `target` (uint8) from `base` (uint8, same size)."""
    import numpy as np
    from numcodecs import blosc

    if len(target) != len(base):
        raise ValueError(f"a delta needs files of one size, got {len(target)} and {len(base)} bytes")
    frames, chunks = [], []
    for start, end, width in plan_chunks(target):
        x = np.bitwise_xor(target[start:end], base[start:end])
        frame = blosc.compress(x, b"zstd", ZSTD_LEVEL, blosc.SHUFFLE, BLOCK_BYTES, typesize=width)
        frames.append(frame)
        chunks.append([start, end, width, len(frame)])
    header = json.dumps(
        {"format": FORMAT, "codec": CODEC, "base": base_dirname, "base_sha256": base_sha256, "sha256": sha256,
         "size": len(target), "chunks": chunks},
        separators=(",", ":"),
    ).encode()  # fmt: skip
    return b"".join([MAGIC, len(header).to_bytes(8, "little"), header, *frames])


# --- reading --------------------------------------------------------------------------------------


def _bad(path: Path, why: str) -> SnapshotCorrupt:
    return SnapshotCorrupt(f"{snapshot_file_name(path)} is not a valid compact snapshot file: {why}")


def _parse_header(raw: bytes, file_size: int, path: Path) -> DeltaHeader:
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("the header is not a JSON object")
        if data.get("format") != FORMAT or data.get("codec") != CODEC:
            raise ValueError(f"format {data.get('format')!r} / codec {data.get('codec')!r} is not {FORMAT} / {CODEC}")
        base = data["base"]
        if not isinstance(base, str) or parse_snapshot_dirname(base) is None:
            raise ValueError(f"base {base!r} is not a version directory name")
        shas = [data["base_sha256"], data["sha256"]]
        if not all(isinstance(s, str) and len(s) == 64 and all(c in "0123456789abcdef" for c in s) for s in shas):
            raise ValueError("a sha256 is not 64 hex digits")
        size = data["size"]
        if type(size) is not int or size < 0:
            raise ValueError(f"size {size!r} is not a byte count")
        offset = 16 + len(raw)
        at = 0
        chunks = []
        for entry in data["chunks"]:
            start, end, width, length = entry
            if not all(type(v) is int for v in entry) or start != at or end <= start or end > size:
                raise ValueError(f"chunk {entry!r} does not continue the file at byte {at}")
            if width not in (1, 2, 4, 8) or (end - start) % width or length < 0:
                raise ValueError(f"chunk {entry!r} has a bad width or length")
            chunks.append(Chunk(start, end, width, offset, length))
            offset += length
            at = end
        if at != size:
            raise ValueError(f"the chunks cover {at} of {size} bytes")
        if offset != file_size:
            raise ValueError(f"the header accounts for {offset} bytes, the file holds {file_size}")
    except (KeyError, TypeError, ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise _bad(path, str(e)) from None
    return DeltaHeader(base=base, base_sha256=shas[0], sha256=shas[1], size=size, chunks=tuple(chunks))


def open_delta(path: Path) -> tuple[DeltaHeader, BinaryIO]:
    """A .zdelta file's checked header and the file, open (the caller closes it); FileNotFoundError
    when there is none. The frames are read later, by the threads that decode them."""
    f = open_snapshot_file(path)
    try:
        file_size = os.fstat(f.fileno()).st_size
        head = os.pread(f.fileno(), 16, 0)
        if len(head) < 16 or head[:8] != MAGIC:
            raise _bad(path, "it does not start with the compact file magic")
        header_len = int.from_bytes(head[8:], "little")
        if header_len > MAX_HEADER_BYTES or 16 + header_len > file_size:
            raise _bad(path, f"a header of {header_len} bytes does not fit the file or the limit")
        return _parse_header(os.pread(f.fileno(), header_len, 16), file_size, path), f
    except BaseException:
        f.close()
        raise


def read_delta(path: Path) -> tuple[DeltaHeader, bytearray]:
    """A .zdelta file's checked header and its bytes; FileNotFoundError when there is none."""
    header, f = open_delta(path)
    with f:
        file_size = os.fstat(f.fileno()).st_size
        data = bytearray(file_size)  # read in place: no copies of a file that may be tens of MB
        got = pread_exactly(f.fileno(), memoryview(data), 0)
        if got != file_size or os.pread(f.fileno(), 1, file_size):
            raise SnapshotCorrupt(f"{snapshot_file_name(path)} changed size while it was being read")
    return header, data


def _check_frame(frame: "bytes | memoryview", chunk: Chunk, path: Path) -> None:
    """A Blosc buffer's own header must agree with its chunk's entry before a byte of it is decoded."""
    expected = chunk.end - chunk.start
    if len(frame) < _BLOSC_HEADER_BYTES:
        raise _bad(path, f"chunk at byte {chunk.start} holds {len(frame)} bytes, less than a Blosc header")
    head = bytes(frame[:_BLOSC_HEADER_BYTES])
    typesize = head[3]
    nbytes, cbytes = int.from_bytes(head[4:8], "little"), int.from_bytes(head[12:16], "little")
    if nbytes != expected or cbytes != len(frame) or typesize != chunk.width:
        raise _bad(
            path,
            f"chunk at byte {chunk.start} declares {nbytes} bytes of width {typesize} in {cbytes}, "
            f"not {expected} of width {chunk.width} in {len(frame)}",
        )


def apply_delta(
    header: DeltaHeader,
    data: "bytes | bytearray | int",
    base: "np.ndarray | int",
    out: "np.ndarray",
    path: Path,
    *,
    digest: Any = None,
    workers: int | None = None,
) -> None:
    """Writes base XOR delta into `out` (which may be `base` itself), frames decoded on `workers`
    threads (default: one per core); with `digest`, the restored bytes are fed to it in order as they become ready.

    `data` is the .zdelta file's bytes, or an open file descriptor of it (as `open_delta` checked it):
    then each worker reads its own frame. `base` is the base file's bytes, or an open file descriptor
    of it (of header.size bytes, checked by the caller): then each worker reads its chunk of the base
    into `out` itself. Either way reading overlaps decoding instead of preceding it."""
    import numpy as np
    from numcodecs import blosc

    base_size = len(out) if isinstance(base, int) else len(base)
    if base_size != header.size or len(out) != header.size:
        raise SnapshotCorrupt(
            f"{snapshot_file_name(path)} restores {header.size} bytes, but its base {header.base} holds {base_size}"
        )
    view = None if isinstance(data, int) else memoryview(data)
    buffers = threading.local()  # one decoding buffer per worker, reused chunk after chunk

    def scratch(size: int) -> "np.ndarray":
        buffer = getattr(buffers, "array", None)
        if buffer is None or len(buffer) < size:
            buffer = buffers.array = np.empty(size, dtype=np.uint8)
        return buffer[:size]

    def frame_of(chunk: Chunk) -> "bytes | memoryview":
        if view is not None:
            return view[chunk.offset : chunk.offset + chunk.length]
        assert isinstance(data, int)
        frame = os.pread(data, chunk.length, chunk.offset)
        if len(frame) != chunk.length:
            raise SnapshotCorrupt(f"{snapshot_file_name(path)} changed size while it was being read")
        return frame

    def base_chunk(chunk: Chunk) -> "np.ndarray":
        if not isinstance(base, int):
            return base[chunk.start : chunk.end]
        dst = out[chunk.start : chunk.end]
        if pread_exactly(base, memoryview(dst), chunk.start) != len(dst):
            raise SnapshotCorrupt(f"the base {header.base} of {snapshot_file_name(path)} ended early")
        return dst

    def decode(chunk: Chunk) -> None:
        frame = frame_of(chunk)
        expected = chunk.end - chunk.start
        _check_frame(frame, chunk, path)
        delta = scratch(expected)
        try:
            blosc.decompress(frame, delta)
        except (RuntimeError, ValueError) as e:
            raise _bad(path, f"chunk at byte {chunk.start}: {e}") from None
        np.bitwise_xor(base_chunk(chunk), delta, out=out[chunk.start : chunk.end])

    def hash_chunk(chunk: Chunk) -> None:
        digest.update(memoryview(out[chunk.start : chunk.end]))

    run_in_order(header.chunks, decode, hash_chunk if digest is not None else None, workers=workers, name="zdelta")


def sha256_of(buffer: "np.ndarray") -> str:
    h = hashlib.sha256()
    for start in range(0, len(buffer), CHUNK_BYTES):
        h.update(memoryview(buffer[start : start + CHUNK_BYTES]))
    return h.hexdigest()

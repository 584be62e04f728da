"""Reads a snapshot's weights while checking every byte against its manifest.

Files are hashed from the same bytes that become the tensors, so a file changed between check and
load cannot slip through. A weights file is read once into one buffer and its tensors are views of
that buffer: peak memory is the file's size, not twice it. Files are opened only as regular files inside
their snapshot directory and read only up to the size their kind allows (see manifest.open_snapshot_file).
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from logit_service.errors import SnapshotCorrupt
from logit_service.snapshots.manifest import (
    Manifest,
    check_file_size,
    open_snapshot_file,
    read_bounded,
    snapshot_file_name,
)

if TYPE_CHECKING:
    import torch

_CHUNK_BYTES = 16 << 20


def _missing(path: Path) -> SnapshotCorrupt:
    return SnapshotCorrupt(f"{snapshot_file_name(path)} is listed in the manifest but missing")


def _check_digest(path: Path, actual: str, expected: str) -> None:
    if actual != expected:
        # Never echo the sha256 found: it would tell a caller the digest of whatever sits there.
        raise SnapshotCorrupt(f"{snapshot_file_name(path)}: its sha256 does not match its manifest; refusing to serve it")


def _open(path: Path):
    try:
        return open_snapshot_file(path)
    except FileNotFoundError:
        raise _missing(path) from None
    except OSError as e:
        raise SnapshotCorrupt(f"{snapshot_file_name(path)} cannot be read ({e.strerror})") from None


def _read_verified(path: Path, expected_sha256: str) -> bytes:
    """A small file's bytes, verified."""
    with _open(path) as f:
        data = read_bounded(f, check_file_size(f, path), path)
    _check_digest(path, hashlib.sha256(data).hexdigest(), expected_sha256)
    return data


def read_verified_buffer(path: Path, expected_sha256: str) -> "torch.Tensor":
    """A file read into one uint8 tensor, hashed chunk by chunk as it arrives."""
    import torch

    f = _open(path)
    with f, ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256") as hasher:
        size = check_file_size(f, path)  # a *.safetensors file: exactly what its header declares
        buffer = torch.empty(size, dtype=torch.uint8)
        view = memoryview(buffer.numpy())
        digest = hashlib.sha256()
        filled = 0
        # sha256 (~1.8 GB/s on one core) costs more than the read: hash chunk i on a second thread
        # while chunk i+1 is read (both release the GIL). One worker keeps the updates in order.
        pending = []
        while filled < size:
            got = f.readinto(view[filled : filled + _CHUNK_BYTES])
            if not got:
                break
            pending.append(hasher.submit(digest.update, view[filled : filled + got]))
            filled += got
        for future in pending:
            future.result()
        if filled != size or f.read(1):
            raise SnapshotCorrupt(f"{snapshot_file_name(path)} changed size while it was being read")
    _check_digest(path, digest.hexdigest(), expected_sha256)
    return buffer


def _safetensors_dtypes() -> dict[str, "torch.dtype"]:
    import torch

    return {
        "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
        "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
        "BOOL": torch.bool,
    }  # fmt: skip


def tensors_from_safetensors_buffer(buffer: "torch.Tensor", source: Path) -> dict[str, "torch.Tensor"]:
    """Parses the safetensors layout (u64 header size, JSON header, raw little-endian data) into views."""
    import torch

    name = snapshot_file_name(source)
    try:
        header_len = int.from_bytes(buffer[:8].numpy().tobytes(), "little")
        if buffer.numel() < 8 or 8 + header_len > buffer.numel():
            raise ValueError(f"a header of {header_len} bytes does not fit in {buffer.numel()} bytes")
        header = json.loads(buffer[8 : 8 + header_len].numpy().tobytes())
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise SnapshotCorrupt(f"{name} has an unreadable safetensors header: {e}") from None
    base = 8 + header_len
    dtypes = _safetensors_dtypes()
    tensors: dict[str, torch.Tensor] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = dtypes[info["dtype"]]
            offsets = info["data_offsets"]
            shape = info["shape"]
            if not all(type(v) is int and v >= 0 for v in (*offsets, *shape)):
                raise ValueError("offsets and dimensions must be non-negative integers")
            start, end = (base + o for o in offsets)
        except (KeyError, TypeError, ValueError) as e:
            raise SnapshotCorrupt(f"{name}: tensor {key!r} has a malformed header entry: {e}") from None
        itemsize = torch.empty((), dtype=dtype).element_size()
        numel = 1
        for d in shape:
            numel *= d
        if end - start != numel * itemsize or end > buffer.numel() or start < base:
            raise SnapshotCorrupt(f"{name}: tensor {key!r} spans bytes [{start}, {end}) that do not fit its shape")
        raw = buffer[start:end]
        if start % itemsize:
            raw = raw.clone()  # a view must start on an element boundary
        tensors[key] = raw.view(dtype).reshape(shape)
    return tensors


def load_verified_config(snapshot_path: Path, manifest: Manifest) -> dict[str, Any]:
    name = "config.json"
    if name not in manifest.files:
        raise SnapshotCorrupt(f"{snapshot_path}: manifest does not list {name}")
    return json.loads(_read_verified(Path(snapshot_path) / name, manifest.files[name]))


def load_verified_weights(snapshot_path: Path, manifest: Manifest) -> dict[str, "torch.Tensor"]:
    # Only the model's weight files: a snapshot may carry other safetensors (the EWMA's running sums).
    names = sorted(n for n in manifest.files if n.startswith("model") and n.endswith(".safetensors"))
    if not names:
        raise SnapshotCorrupt(f"{snapshot_path}: manifest lists no .safetensors file")
    state_dict: dict[str, torch.Tensor] = {}
    for name in names:
        path = Path(snapshot_path) / name
        state_dict.update(tensors_from_safetensors_buffer(read_verified_buffer(path, manifest.files[name]), path))
    return state_dict

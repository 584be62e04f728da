"""Reads a snapshot's weights while checking every byte against its manifest.

Files are hashed from the same bytes that become the tensors, so a file changed between check and
load cannot slip through. A weights file is read once into one buffer and its tensors are views of
that buffer: peak memory is the file's size, not twice it.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from logit_service.errors import SnapshotCorrupt
from logit_service.snapshots.manifest import Manifest

if TYPE_CHECKING:
    import torch

_CHUNK_BYTES = 16 << 20


def _missing(path: Path) -> SnapshotCorrupt:
    return SnapshotCorrupt(f"{path} is listed in the manifest but missing")


def _check_digest(path: Path, actual: str, expected: str) -> None:
    if actual != expected:
        raise SnapshotCorrupt(f"{path} has sha256 {actual}, manifest says {expected}; refusing to serve it")


def _read_verified(path: Path, expected_sha256: str) -> bytes:
    """A small file's bytes, verified."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise _missing(path) from None
    _check_digest(path, hashlib.sha256(data).hexdigest(), expected_sha256)
    return data


def read_verified_buffer(path: Path, expected_sha256: str) -> "torch.Tensor":
    """A file read into one uint8 tensor, hashed chunk by chunk as it arrives."""
    import torch

    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise _missing(path) from None
    with f, ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256") as hasher:
        size = path.stat().st_size
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
            raise SnapshotCorrupt(f"{path} changed size while it was being read")
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

    try:
        header_len = int.from_bytes(buffer[:8].numpy().tobytes(), "little")
        header = json.loads(buffer[8 : 8 + header_len].numpy().tobytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise SnapshotCorrupt(f"{source} has an unreadable safetensors header: {e}") from None
    base = 8 + header_len
    dtypes = _safetensors_dtypes()
    tensors: dict[str, torch.Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = dtypes[info["dtype"]]
            start, end = (base + int(o) for o in info["data_offsets"])
            shape = [int(d) for d in info["shape"]]
        except (KeyError, TypeError, ValueError) as e:
            raise SnapshotCorrupt(f"{source}: tensor {name!r} has a malformed header entry: {e}") from None
        itemsize = torch.empty((), dtype=dtype).element_size()
        numel = 1
        for d in shape:
            numel *= d
        if end - start != numel * itemsize or end > buffer.numel() or start < base:
            raise SnapshotCorrupt(f"{source}: tensor {name!r} spans bytes [{start}, {end}) that do not fit its shape")
        raw = buffer[start:end]
        if start % itemsize:
            raw = raw.clone()  # a view must start on an element boundary
        tensors[name] = raw.view(dtype).reshape(shape)
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

"""Reads a snapshot's weights while checking every byte against its manifest.

Files are hashed from the same bytes that become the tensors, so a file changed between check and
load cannot slip through. A weights file is read once into one buffer and its tensors are views of
that buffer: peak memory is the file's size, not twice it. Files are opened only as regular files inside
their snapshot directory and read only up to the size their kind allows (see manifest.open_snapshot_file).
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from logit_common.snapshots.pipeline import advise_sequential, default_workers, pread_exactly, run_in_order
from logit_service.errors import SnapshotCorrupt
from logit_service.snapshots.buffers import fresh_byte_buffer
from logit_service.snapshots.compact import (
    MAX_CHAIN,
    apply_delta,
    compact_name,
    open_delta,
)
from logit_service.snapshots.manifest import (
    Manifest,
    check_file_size,
    open_snapshot_file,
    parse_snapshot_dirname,
    read_bounded,
    snapshot_file_name,
)
from logit_service.tensor_threads import serial_tensor_ops

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
    try:
        return _read_buffer(path, expected_sha256)
    except FileNotFoundError:
        raise _missing(path) from None


def _read_buffer(path: Path, expected_sha256: str | None) -> "torch.Tensor":
    """read_verified_buffer, but FileNotFoundError when the file is absent; no hash with None."""
    try:
        f = open_snapshot_file(path)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise SnapshotCorrupt(f"{snapshot_file_name(path)} cannot be read ({e.strerror})") from None
    with f:
        size = check_file_size(f, path)  # a *.safetensors file: exactly what its header declares
        fd = f.fileno()
        advise_sequential(fd)
        buffer = fresh_byte_buffer(size)
        array = buffer.numpy()
        digest = hashlib.sha256()

        def read(span: tuple[int, int]) -> None:
            start, end = span
            if pread_exactly(fd, memoryview(array[start:end]), start) != end - start:
                raise SnapshotCorrupt(f"{snapshot_file_name(path)} changed size while it was being read")

        def hash_chunk(span: tuple[int, int]) -> None:
            digest.update(memoryview(array[span[0] : span[1]]))

        # sha256 (~1.8 GB/s on one core) is the slowest part: chunks are read (and their fresh pages
        # faulted in) on the workers, several at once, while this thread hashes them in order.
        spans = [(s, min(s + _CHUNK_BYTES, size)) for s in range(0, size, _CHUNK_BYTES)]
        run_in_order(spans, read, hash_chunk if expected_sha256 is not None else None, name="read")
        if os.pread(fd, 1, size):
            raise SnapshotCorrupt(f"{snapshot_file_name(path)} changed size while it was being read")
    if expected_sha256 is not None:
        _check_digest(path, digest.hexdigest(), expected_sha256)
    return buffer


def _open_base(path: Path):
    """(open file, size) of a base weights file, its size checked as any read checks it; not hashed."""
    try:
        f = open_snapshot_file(path)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise SnapshotCorrupt(f"{snapshot_file_name(path)} cannot be read ({e.strerror})") from None
    try:
        return f, check_file_size(f, path)
    except BaseException:
        f.close()
        raise


BaseLookup = Callable[[str, str, str], "torch.Tensor | None"]
"""(snapshot directory name, file name, sha256) -> that file's verified bytes held in RAM, or None."""


def read_weights_file(path: Path, expected_sha256: str, cached: BaseLookup | None = None) -> "torch.Tensor":
    """A weights file's verified bytes, read whole or restored from its compact form (compact.py).

    Whichever form is on disk: compaction writes the compact file before it removes the full one, and
    materialising writes the full file before it removes the compact one, so one of the two looks
    finds it; a second round covers a switch between the looks."""
    for _ in range(2):
        try:
            return _read_buffer(path, expected_sha256)
        except FileNotFoundError:
            pass
        try:
            return restore_compact(path, expected_sha256, cached)
        except FileNotFoundError:
            continue
    raise _missing(path)


def restore_compact(path: Path, expected_sha256: str, cached: BaseLookup | None) -> "torch.Tensor":
    """Follows the file's deltas to a full (or RAM-cached) base, applies them, checks the result's sha256.

    Bases are read without hashing: any wrong byte in a base or a delta makes the restored file miss the
    sha256 its manifest lists, and that is checked on every restore."""
    chain = []  # (compact file's path, its header, the file, open), target first
    base = None
    try:
        directory, sha, version = path.parent, expected_sha256, parse_snapshot_dirname(path.parent.name)
        while base is None:
            if chain:
                held = cached(directory.name, path.name, sha) if cached is not None else None
                if held is not None:
                    base, owned = held, False
                    break
                try:
                    base, owned = _open_base(directory / path.name), True
                    break
                except FileNotFoundError:
                    pass
            zpath = directory / compact_name(path.name)
            try:
                header, zfile = open_delta(zpath)
            except FileNotFoundError:
                if not chain:
                    raise
                raise SnapshotCorrupt(
                    f"{snapshot_file_name(path)} is stored as a delta from {directory.name}, which holds no "
                    f"{path.name} in any form; refusing to serve it"
                ) from None
            except OSError as e:
                raise SnapshotCorrupt(f"{snapshot_file_name(zpath)} cannot be read ({e.strerror})") from None
            chain.append((zpath, header, zfile))
            if header.sha256 != sha:
                raise SnapshotCorrupt(f"{snapshot_file_name(zpath)} restores other bytes than its manifest lists")
            if version is None or header.base_version <= version or len(chain) > MAX_CHAIN:
                raise SnapshotCorrupt(
                    f"{snapshot_file_name(zpath)} names base {header.base}; a delta's base must be a newer version, "
                    f"at most {MAX_CHAIN} deltas away"
                )
            directory, sha, version = path.parent.parent / header.base, header.base_sha256, header.base_version
        digest = hashlib.sha256()
        # The base on disk and every delta's frames are read by the decoding threads, chunk by chunk,
        # straight into the output: reading overlaps decoding and hashing.
        f, size = base if owned else (None, base.numel())
        out = fresh_byte_buffer(size)
        if f is not None:
            advise_sequential(f.fileno())
        source = f.fileno() if owned else base.numpy()
        for i, (zpath, header, zfile) in enumerate(reversed(chain)):
            final = i == len(chain) - 1  # intermediate versions are never hashed: the target's hash covers them
            apply_delta(header, zfile.fileno(), source, out.numpy(), zpath, digest=digest if final else None)
            source = out.numpy()
    finally:
        for _, _, zfile in chain:
            zfile.close()
        if base is not None and owned:
            base[0].close()
    if digest.hexdigest() != expected_sha256:
        via = ", ".join(h.base for _, h, _ in chain)
        raise SnapshotCorrupt(
            f"{snapshot_file_name(path)} restored from its compact form (via {via}) does not match its "
            "manifest; refusing to serve it"
        )
    return out


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


def weights_file_names(manifest: Manifest) -> list[str]:
    # Only the model's weight files: a snapshot may carry other safetensors (the EWMA's running sums).
    return sorted(n for n in manifest.files if n.startswith("model") and n.endswith(".safetensors"))


def load_verified_files(
    snapshot_path: Path, manifest: Manifest, cached: BaseLookup | None = None
) -> tuple[dict[str, "torch.Tensor"], dict[str, tuple[str, "torch.Tensor"]]]:
    """The state dict, and each weights file's (sha256, verified bytes) that its tensors are views of."""
    names = weights_file_names(manifest)
    if not names:
        raise SnapshotCorrupt(f"{snapshot_path}: manifest lists no .safetensors file")
    paths = [Path(snapshot_path) / name for name in names]

    def read(path: Path) -> "torch.Tensor":
        return read_weights_file(path, manifest.files[path.name], cached)

    # Shard files are read and hashed at once, one per core: each file's sha256 is sequential, and it
    # is the slowest part of a load. Every file is waited for before the first error is raised, so no
    # read is left writing into a buffer nobody holds.
    with ThreadPoolExecutor(
        max_workers=min(len(paths), default_workers()), thread_name_prefix="shard", initializer=serial_tensor_ops
    ) as pool:
        futures = [pool.submit(read, path) for path in paths]
        wait(futures)
    state_dict: dict[str, torch.Tensor] = {}
    files = {}
    for path, future in zip(paths, futures):
        buffer = future.result()
        files[path.name] = (manifest.files[path.name], buffer)
        tensors = tensors_from_safetensors_buffer(buffer, path)
        if twice := sorted(state_dict.keys() & tensors.keys()):
            raise SnapshotCorrupt(
                f"{snapshot_file_name(path)} holds tensor {twice[0]!r}, which another weights file of the "
                "snapshot holds too; refusing to choose one"
            )
        state_dict.update(tensors)
    return state_dict, files


def load_verified_weights(snapshot_path: Path, manifest: Manifest, cached: BaseLookup | None = None) -> dict[str, "torch.Tensor"]:
    return load_verified_files(snapshot_path, manifest, cached)[0]

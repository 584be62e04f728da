"""The on-disk snapshot format: directory naming, manifest.json, file digests and verification.

Standard library only, so trainers and clients can write snapshots without the server's dependencies.
A snapshot is a Hugging Face model directory (config.json + *.safetensors) plus manifest.json; engines
such as vLLM or transformers load it as it is.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Mapping

from logit_common.errors import InvalidRequest, SnapshotCorrupt

MANIFEST_NAME = "manifest.json"
COMPACT_SUFFIX = ".zdelta"
"""A listed weights file may be stored as `<name>.zdelta`, its difference from a newer version (the
server's snapshots/compact.py)."""
FORMAT_VERSION = 1
# ASCII digits only (\d would take other scripts' digits), and at most 19 of them: an int64.
_VERSION_DIR = re.compile(r"^v([0-9]{8,19})$")
MAX_POLICY_VERSION = 2**63 - 1
"""Versions travel as int64 on the wire and in the registry."""
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")

# Every read of a snapshot is bounded, so no file (however large or strange) can hold an I/O thread.
MAX_MANIFEST_BYTES = 16 << 20
"""manifest.json is read whole; anything larger is not a manifest this format writes."""
MAX_PLAIN_FILE_BYTES = 64 << 20
"""Bound on a listed file other than *.safetensors (config.json and the like)."""
MAX_SAFETENSORS_HEADER_BYTES = 100_000_000
"""The safetensors library's own bound on a header; a *.safetensors file must be exactly the size
its header declares."""
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
# config.json keys that do not change the computed function: ignored by the model-config hash.
_VOLATILE_CONFIG_KEYS = {"transformers_version", "_name_or_path", "dtype", "torch_dtype", "_commit_hash"}


def snapshot_dirname(policy_version: int) -> str:
    return f"v{policy_version:08d}"


def parse_snapshot_dirname(name: str) -> int | None:
    match = _VERSION_DIR.match(name)
    if not match:
        return None
    version = int(match.group(1))
    return version if version <= MAX_POLICY_VERSION else None


def snapshot_file_name(path: Path) -> str:
    """How messages name a snapshot's file: relative to the snapshot directory's parent, so a
    message never says more about the server's file system than the snapshot itself."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}"


def open_snapshot_file(path: Path) -> BinaryIO:
    """Opens a file of a snapshot for reading, refusing anything but a regular file.

    Neither the file nor its directory may be a symbolic link (O_NOFOLLOW on both): a snapshot's
    bytes always come from inside it. FIFOs, sockets and devices are refused before the first read
    (the open does not block: O_NONBLOCK). Raises FileNotFoundError when the file does not exist,
    SnapshotCorrupt when it is not a regular file in a real directory.
    """
    path = Path(path)
    name = snapshot_file_name(path)
    try:
        dir_fd = os.open(path.parent, _DIR_FLAGS)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise FileNotFoundError(errno.ENOENT, "no such snapshot directory", path.parent.name) from None
        raise SnapshotCorrupt(
            f"snapshot directory {path.parent.name} is a symbolic link or not a directory; refusing to read it"
        ) from None
    try:
        fd = os.open(path.name, _OPEN_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise FileNotFoundError(errno.ENOENT, "no such file", name) from None
        if e.errno in (errno.ELOOP, errno.EMLINK):  # what O_NOFOLLOW answers for a symbolic link
            raise SnapshotCorrupt(f"{name} is a symbolic link; a snapshot may hold only regular files") from None
        raise SnapshotCorrupt(f"{name} cannot be opened ({os.strerror(e.errno or 0)})") from None
    finally:
        os.close(dir_fd)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise SnapshotCorrupt(f"{name} is not a regular file; a snapshot may hold only regular files")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def check_file_size(f: BinaryIO, path: Path) -> int:
    """The size of an opened snapshot file, checked against what its kind allows; returns it.

    A *.safetensors file must be exactly as long as its header declares; other files are bounded by
    MAX_PLAIN_FILE_BYTES. So a read never runs longer than the manifest and the header say it can.
    """
    size = os.fstat(f.fileno()).st_size
    name = snapshot_file_name(path)
    if not Path(path).name.endswith(".safetensors"):
        if size > MAX_PLAIN_FILE_BYTES:
            raise SnapshotCorrupt(f"{name} holds {size} bytes, over the limit of {MAX_PLAIN_FILE_BYTES} for such a file")
        return size
    declared = _safetensors_declared_size(f, size, name)
    if size != declared:
        raise SnapshotCorrupt(f"{name} holds {size} bytes, but its safetensors header accounts for {declared}")
    return size


def _safetensors_declared_size(f: BinaryIO, size: int, name: str) -> int:
    """8 + header length + the end of the last tensor's data, from the header alone."""
    head = os.pread(f.fileno(), 8, 0)
    if len(head) < 8:
        raise SnapshotCorrupt(f"{name} is too short to hold a safetensors header")
    header_len = int.from_bytes(head, "little")
    if header_len > MAX_SAFETENSORS_HEADER_BYTES or 8 + header_len > size:
        raise SnapshotCorrupt(f"{name} declares a safetensors header of {header_len} bytes, more than the file or the limit allows")
    try:
        header = json.loads(os.pread(f.fileno(), header_len, 8))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        end = 0
        for key, info in header.items():
            if key == "__metadata__":
                continue
            start, stop = info["data_offsets"]
            if not all(type(o) is int for o in (start, stop)) or not 0 <= start <= stop:
                raise ValueError(f"tensor {key!r} has data_offsets {info['data_offsets']!r}")
            end = max(end, stop)
    except (KeyError, TypeError, ValueError, RecursionError) as e:
        raise SnapshotCorrupt(f"{name} has an unreadable safetensors header: {e}") from None
    return 8 + header_len + end


def read_bounded(f: BinaryIO, size: int, path: Path) -> bytes:
    """All `size` bytes of an opened file, refusing one that changes length while it is read."""
    data = bytearray()
    while len(data) < size:
        block = f.read(min(size - len(data), 8 << 20))
        if not block:
            break
        data += block
    if len(data) != size or f.read(1):
        raise SnapshotCorrupt(f"{snapshot_file_name(path)} changed size while it was being read")
    return bytes(data)


def file_sha256(path: Path, chunk_bytes: int = 8 << 20) -> str:
    """sha256 of a snapshot file, read through `open_snapshot_file` within its size bound."""
    h = hashlib.sha256()
    with open_snapshot_file(path) as f:
        size = check_file_size(f, path)
        done = 0
        while done < size:
            block = f.read(min(chunk_bytes, size - done))
            if not block:
                break
            h.update(block)
            done += len(block)
        if done != size or f.read(1):
            raise SnapshotCorrupt(f"{snapshot_file_name(path)} changed size while it was being read")
    return h.hexdigest()


def model_config_hash(model_config: Mapping[str, Any]) -> str:
    """Hash of the architecture-defining config, so versions of different models never mix."""
    kept = {k: v for k, v in model_config.items() if k not in _VOLATILE_CONFIG_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Manifest:
    policy_version: int
    files: dict[str, str]  # relative file name -> sha256
    model_config_hash: str
    dtype: str
    created_at: float
    kind: str = "version"  # "version" or "ewma"
    covers_versions: tuple[int, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def digest(self) -> str:
        """One sha256 naming exactly these weights; what every answer is stamped with."""
        body = {
            "policy_version": self.policy_version,
            "kind": self.kind,
            "files": dict(sorted(self.files.items())),
            "model_config_hash": self.model_config_hash,
            "dtype": self.dtype,
            "covers_versions": list(self.covers_versions),
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    def to_json(self) -> str:
        data = asdict(self)
        data["covers_versions"] = list(self.covers_versions)
        data["digest"] = self.digest
        return json.dumps(data, indent=2, sort_keys=True)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a manifest may hold")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as inf
        raise ValueError(f"{text} is not a finite number")
    return value


def _int_field(data: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = data.get(key, default)
    if type(value) is not int or not 0 <= value <= MAX_POLICY_VERSION:
        raise ValueError(f"{key} must be an integer in [0, 2^63), got {value!r}")
    return value


def _str_field(data: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string, got {type(value).__name__}")
    return value


def _parse_manifest(data: Any) -> Manifest:
    """A Manifest from parsed JSON, every field's type and range checked (ValueError otherwise)."""
    if not isinstance(data, dict):
        raise ValueError("the manifest is not a JSON object")
    files = data.get("files")
    if not isinstance(files, dict):
        raise ValueError(f"files must be an object of file name to sha256, got {type(files).__name__}")
    for name, sha in files.items():
        if not isinstance(sha, str) or not _SHA256_HEX.match(sha):
            raise ValueError(f"files[{name!r}] is not a hex sha256")
    created_at = data.get("created_at")
    if type(created_at) not in (int, float) or not math.isfinite(created_at):
        raise ValueError(f"created_at must be a finite number, got {created_at!r}")
    covers = data.get("covers_versions", [])
    if not isinstance(covers, list):
        raise ValueError("covers_versions must be a list")
    extra = data.get("extra", {})
    if not isinstance(extra, dict):
        raise ValueError("extra must be an object")
    return Manifest(
        policy_version=_int_field(data, "policy_version"),
        files=dict(files),
        model_config_hash=_str_field(data, "model_config_hash"),
        dtype=_str_field(data, "dtype"),
        created_at=float(created_at),
        kind=_str_field(data, "kind", "version"),
        covers_versions=tuple(_int_field({"covers_versions": v}, "covers_versions") for v in covers),
        extra=dict(extra),
        format_version=_int_field(data, "format_version", FORMAT_VERSION),
    )


def read_manifest(snapshot_path: Path) -> Manifest:
    """The manifest of a snapshot directory, strictly parsed: SnapshotCorrupt for anything malformed."""
    path = Path(snapshot_path) / MANIFEST_NAME
    name = snapshot_file_name(path)
    try:
        with open_snapshot_file(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_MANIFEST_BYTES:
                raise SnapshotCorrupt(f"{name} holds {size} bytes, over the manifest limit of {MAX_MANIFEST_BYTES}")
            raw = read_bounded(f, size, path)
    except FileNotFoundError:
        raise InvalidRequest(f"{Path(snapshot_path).name} is not a snapshot: {MANIFEST_NAME} is missing") from None
    except OSError as e:
        raise SnapshotCorrupt(f"{name} cannot be read ({os.strerror(e.errno or 0)})") from None
    manifest, recorded = parse_manifest(raw, name)
    if recorded is not None and recorded != manifest.digest:
        raise SnapshotCorrupt(f"{name} records a digest that does not match its contents")
    return manifest


def parse_manifest(raw: bytes, name: str = MANIFEST_NAME) -> tuple[Manifest, str | None]:
    """A manifest's bytes, strictly parsed (SnapshotCorrupt for anything malformed), and the digest it
    records (None when it records none), left for the caller to compare with `Manifest.digest`."""
    try:
        data = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise SnapshotCorrupt(f"{name} cannot be read as a manifest: {e}") from None
    try:
        manifest = _parse_manifest(data)
    except (TypeError, ValueError, OverflowError) as e:
        raise SnapshotCorrupt(f"{name} is missing or mistypes a field: {e}") from None
    for file_name in manifest.files:
        # Plain file names only: a manifest must never make the server read outside its directory.
        if not file_name or file_name != Path(file_name).name or file_name.startswith(".") or "\0" in file_name:
            raise SnapshotCorrupt(f"{name} lists {file_name!r}; manifest entries must be plain file names")
    recorded = data.get("digest")
    return manifest, recorded if recorded is None else str(recorded)


def verify_file(snapshot_path: Path, name: str, expected_sha256: str) -> None:
    path = Path(snapshot_path) / name
    try:
        actual = file_sha256(path)
    except FileNotFoundError:
        raise SnapshotCorrupt(f"{snapshot_file_name(path)} is listed in the manifest but missing") from None
    except OSError as e:
        raise SnapshotCorrupt(f"{snapshot_file_name(path)} cannot be read ({os.strerror(e.errno or 0)})") from None
    if actual != expected_sha256:
        # Never echo what was found: the sha256 of a file is not the client's business.
        raise SnapshotCorrupt(f"{snapshot_file_name(path)}: its sha256 does not match its manifest")


def check_listed_files(snapshot_path: Path, manifest: Manifest) -> None:
    """Without reading them: raises SnapshotCorrupt unless every listed file is a regular file (not a
    link, FIFO or device) inside the snapshot directory. What a scan checks beside the manifest."""
    for name in sorted(manifest.files):
        path = stored_file(snapshot_path, name)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            raise SnapshotCorrupt(f"{snapshot_file_name(path)} is listed in the manifest but missing") from None
        if stat.S_ISLNK(mode):
            raise SnapshotCorrupt(f"{snapshot_file_name(path)} is a symbolic link; a snapshot may hold only regular files")
        if not stat.S_ISREG(mode):
            raise SnapshotCorrupt(f"{snapshot_file_name(path)} is not a regular file; a snapshot may hold only regular files")


def stored_file(snapshot_path: Path, name: str) -> Path:
    """Where a listed file lies: itself, or its compact form when only that is there."""
    path = Path(snapshot_path) / name
    if not os.path.lexists(path) and name.endswith(".safetensors"):
        compact = Path(snapshot_path) / (name + COMPACT_SUFFIX)
        if os.path.lexists(compact):
            return compact
    return path


def verify_snapshot(snapshot_path: Path, manifest: Manifest) -> None:
    """Raises SnapshotCorrupt unless every listed file hashes to what the manifest says."""
    for name, expected in sorted(manifest.files.items()):
        verify_file(snapshot_path, name, expected)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

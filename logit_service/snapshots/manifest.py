"""The on-disk snapshot format: directory naming, manifest.json, file digests and verification.

Standard library only, so trainers and clients can write snapshots without the server's dependencies.
A snapshot is a Hugging Face model directory (config.json + *.safetensors) plus manifest.json; engines
such as vLLM or transformers load it as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from logit_service.errors import InvalidRequest, SnapshotCorrupt

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
_VERSION_DIR = re.compile(r"^v(\d{8,})$")
# config.json keys that do not change the computed function: ignored by the model-config hash.
_VOLATILE_CONFIG_KEYS = {"transformers_version", "_name_or_path", "dtype", "torch_dtype", "_commit_hash"}


def snapshot_dirname(policy_version: int) -> str:
    return f"v{policy_version:08d}"


def parse_snapshot_dirname(name: str) -> int | None:
    match = _VERSION_DIR.match(name)
    return int(match.group(1)) if match else None


def file_sha256(path: Path, chunk_bytes: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            h.update(block)
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


def read_manifest(snapshot_path: Path) -> Manifest:
    path = Path(snapshot_path) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidRequest(f"{snapshot_path} is not a snapshot: {MANIFEST_NAME} is missing") from None
    except (OSError, ValueError) as e:
        raise SnapshotCorrupt(f"{path} cannot be read as a manifest: {e}") from None
    try:
        manifest = Manifest(
            policy_version=int(data["policy_version"]),
            files={str(k): str(v) for k, v in data["files"].items()},
            model_config_hash=str(data["model_config_hash"]),
            dtype=str(data["dtype"]),
            created_at=float(data["created_at"]),
            kind=str(data.get("kind", "version")),
            covers_versions=tuple(int(v) for v in data.get("covers_versions", ())),
            extra=dict(data.get("extra", {})),
            format_version=int(data.get("format_version", FORMAT_VERSION)),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise SnapshotCorrupt(f"{path} is missing or mistypes a field: {e}") from None
    for name in manifest.files:
        # Plain file names only: a manifest must never make the server read outside its directory.
        if not name or name != Path(name).name or name.startswith("."):
            raise SnapshotCorrupt(f"{path} lists {name!r}; manifest entries must be plain file names")
    recorded = data.get("digest")
    if recorded is not None and recorded != manifest.digest:
        raise SnapshotCorrupt(f"{path} records digest {recorded} but its contents hash to {manifest.digest}")
    return manifest


def verify_file(snapshot_path: Path, name: str, expected_sha256: str) -> None:
    path = Path(snapshot_path) / name
    try:
        actual = file_sha256(path)
    except FileNotFoundError:
        raise SnapshotCorrupt(f"{path} is listed in the manifest but missing") from None
    if actual != expected_sha256:
        raise SnapshotCorrupt(f"{path} has sha256 {actual}, manifest says {expected_sha256}")


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

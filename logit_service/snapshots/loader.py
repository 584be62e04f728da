"""Reads a snapshot's weights while checking every byte against its manifest.

Files are hashed from the same bytes that are parsed, so a file changed between check and load
cannot slip through.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from logit_service.errors import SnapshotCorrupt
from logit_service.snapshots.manifest import Manifest

if TYPE_CHECKING:
    import torch


def _read_verified(path: Path, expected_sha256: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SnapshotCorrupt(f"{path} is listed in the manifest but missing") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise SnapshotCorrupt(f"{path} has sha256 {actual}, manifest says {expected_sha256}; refusing to serve it")
    return data


def load_verified_config(snapshot_path: Path, manifest: Manifest) -> dict[str, Any]:
    name = "config.json"
    if name not in manifest.files:
        raise SnapshotCorrupt(f"{snapshot_path}: manifest does not list {name}")
    return json.loads(_read_verified(Path(snapshot_path) / name, manifest.files[name]))


def load_verified_weights(snapshot_path: Path, manifest: Manifest) -> dict[str, "torch.Tensor"]:
    from safetensors.torch import load as load_safetensors

    state_dict: dict[str, torch.Tensor] = {}
    # Only the model's weight files: a snapshot may carry other safetensors (the EWMA's running sums).
    names = sorted(n for n in manifest.files if n.startswith("model") and n.endswith(".safetensors"))
    if not names:
        raise SnapshotCorrupt(f"{snapshot_path}: manifest lists no .safetensors file")
    for name in names:
        data = _read_verified(Path(snapshot_path) / name, manifest.files[name])
        try:
            state_dict.update(load_safetensors(data))
        except Exception as e:  # safetensors raises its own error types for malformed headers
            raise SnapshotCorrupt(f"{snapshot_path / name} is not a readable safetensors file: {e}") from None
    return state_dict

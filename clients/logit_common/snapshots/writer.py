"""Writes a state dict as a snapshot directory, atomically: write aside, fsync, rename.

Used by trainers (through the client) and by the server's EWMA track. torch and safetensors (the
client's `publish` extra) are imported inside the functions so that importing this module stays cheap.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from logit_common.errors import VersionConflict
from logit_common.extras import missing_extra
from logit_common.snapshots.manifest import (
    MANIFEST_NAME,
    Manifest,
    file_sha256,
    fsync_dir,
    model_config_hash,
    read_manifest,
    snapshot_dirname,
)

if TYPE_CHECKING:
    import torch

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"  # transformers' and vLLM's map of tensor -> shard file
# Weights above this are written as several shard files, whole tensors each, so that a load can read
# and hash them on several cores (the sha256 of one file is sequential); smaller ones stay one file.
DEFAULT_MAX_SHARD_BYTES = 64 << 20
CONFIG_NAME = "config.json"
FILE_MODE = 0o644
DIR_MODE = 0o755


def _cpu_tensors(state_dict: Mapping[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
    """Contiguous CPU tensors; storage shared between keys (tied embeddings) is cloned, since
    safetensors refuses aliased tensors."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for name, tensor in state_dict.items():
        t = tensor.detach().to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen:
            t = t.clone()
        seen.add(key)
        out[name] = t
    return out


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _dtype_name(tensors: Mapping[str, "torch.Tensor"]) -> str:
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values() if t.is_floating_point()})
    return ",".join(dtypes) or "none"


def shard_tensors(tensors: Mapping[str, "torch.Tensor"], max_shard_bytes: int | None) -> dict[str, dict[str, "torch.Tensor"]]:
    """File name -> its tensors. One `model.safetensors` when everything fits in `max_shard_bytes` (or
    None); else `model-0000k-of-0000n.safetensors` filled in state-dict order, whole tensors each (one
    larger than the limit gets a file of its own). The same names and sizes always shard the same way,
    so consecutive versions pair file by file (compact differences are taken per file)."""
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    if max_shard_bytes is None or total <= max_shard_bytes:
        return {WEIGHTS_NAME: dict(tensors)}
    groups: list[dict[str, "torch.Tensor"]] = [{}]
    filled = 0
    for name, t in tensors.items():
        size = t.numel() * t.element_size()
        if groups[-1] and filled + size > max_shard_bytes:
            groups.append({})
            filled = 0
        groups[-1][name] = t
        filled += size
    n = len(groups)
    return {f"model-{k + 1:05d}-of-{n:05d}.safetensors": group for k, group in enumerate(groups)}


def _index_json(shards: Mapping[str, Mapping[str, "torch.Tensor"]]) -> bytes:
    total = sum(t.numel() * t.element_size() for group in shards.values() for t in group.values())
    weight_map = {name: file for file, group in shards.items() for name in group}
    return json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True).encode()


def write_snapshot(
    root: str | Path,
    policy_version: int,
    state_dict: Mapping[str, "torch.Tensor"],
    model_config: Mapping[str, Any],
    *,
    kind: str = "version",
    covers_versions: tuple[int, ...] = (),
    dirname: str | None = None,
    extra_files: Mapping[str, bytes] | None = None,
    extra: Mapping[str, Any] | None = None,
    max_shard_bytes: int | None = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Writes `root/v<version>/` and returns it. Idempotent for identical weights; a different
    snapshot already under that version raises VersionConflict (a version names one set of weights).
    Weights over `max_shard_bytes` go to several shard files with an index, as transformers writes
    them (`shard_tensors`); None keeps one file whatever the size."""
    try:
        from safetensors.torch import save_file
    except ModuleNotFoundError as e:  # the client's base install has neither safetensors nor torch
        raise missing_extra(e, extra="publish", needed_for="writing a snapshot") from e

    if policy_version < 0:
        raise ValueError(f"policy_version must be >= 0, got {policy_version}")
    root = Path(root)
    if not root.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, DIR_MODE)  # a server running as another user must be able to enter it
    final = root / (dirname or snapshot_dirname(policy_version))
    tmp = root / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        tensors = _cpu_tensors(state_dict)
        shards = shard_tensors(tensors, max_shard_bytes)
        for file_name, group in shards.items():
            weights_path = tmp / file_name
            # One metadata key only: safetensors serialises several in hash-map order, which would make
            # the same weights hash differently from one write to the next (the version is in the manifest).
            save_file(group, str(weights_path), metadata={"format": "pt"})
            with open(weights_path, "rb+") as f:
                os.fsync(f.fileno())
        written = list(shards)
        if len(shards) > 1:
            _write_file(tmp / INDEX_NAME, _index_json(shards))
            written.append(INDEX_NAME)
        config = dict(model_config)
        _write_file(tmp / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True, default=str).encode())
        for name, data in (extra_files or {}).items():
            _write_file(tmp / name, data)
        names = (*written, CONFIG_NAME, *(extra_files or {}))
        manifest = Manifest(
            policy_version=policy_version,
            files=dict(zip(names, _hash_files(tmp, names))),
            model_config_hash=model_config_hash(config),
            dtype=_dtype_name(tensors),
            created_at=time.time(),
            kind=kind,
            covers_versions=tuple(covers_versions),
            extra=dict(extra or {}),
        )
        _write_file(tmp / MANIFEST_NAME, manifest.to_json().encode())
        # Readable by every user of the shared storage, whatever the umask (safetensors writes 0600):
        # servers often run as another user than the trainer.
        for name in (*manifest.files, MANIFEST_NAME):
            os.chmod(tmp / name, FILE_MODE)
        os.chmod(tmp, DIR_MODE)
        fsync_dir(tmp)
        if not final.exists():
            try:
                os.rename(tmp, final)
                fsync_dir(root)
                return final
            except OSError:
                if not final.exists():
                    raise
                # another writer renamed the same snapshot in between: compare with what it wrote
        _check_same_files(final, manifest, policy_version)
        return final
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _hash_files(directory: Path, names: tuple[str, ...]) -> list[str]:
    """sha256 of each file, several at once (hashlib releases the GIL): shards hash on every core."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(len(names), os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda name: file_sha256(directory / name), names))


def _check_same_files(final: Path, manifest: Manifest, policy_version: int) -> None:
    existing = read_manifest(final)
    if existing.files != manifest.files:
        raise VersionConflict(
            f"{final} already holds other weights for version {policy_version} "
            f"(digest {existing.digest}); a version number names one set of weights"
        )

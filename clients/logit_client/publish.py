"""Publishing trainer weights: write a snapshot directory, then register it with the service.

The snapshot format belongs to logit_common.snapshots.writer; this module only gathers the state dict
and model config from what a trainer holds, and is the one place in the client that touches weights.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .aio import AsyncLogitClient
    from .client import LogitClient
    from .versions import PublishedVersion


def _state_dict_and_config(
    weights: Any, model_config: Mapping[str, Any] | None
) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    if callable(getattr(weights, "state_dict", None)):  # an nn.Module (duck-typed: no torch import here)
        state_dict = weights.state_dict()
        config = getattr(weights, "config", None)
        if model_config is None and callable(getattr(config, "to_dict", None)):
            model_config = config.to_dict()  # a transformers PreTrainedModel carries its config
    elif isinstance(weights, Mapping):
        state_dict = weights
    else:
        raise TypeError(f"weights must be an nn.Module or a state dict, got {type(weights).__name__}")
    if model_config is None:
        # The server rebuilds the architecture from the config; without it the snapshot is unusable.
        raise ValueError("model_config is required unless weights is a module with a transformers .config")
    return state_dict, model_config


def write_snapshot_files(
    policy_version: int,
    weights: Any,
    snapshot_dir: str | Path,
    model_config: Mapping[str, Any] | None = None,
) -> Path:
    """Writes the snapshot of `weights` for `policy_version` under `snapshot_dir`; returns its final path."""
    from logit_common.snapshots.writer import write_snapshot  # torch-heavy: only publishers pay for it

    state_dict, config = _state_dict_and_config(weights, model_config)
    return write_snapshot(snapshot_dir, policy_version, state_dict, config)


def publish(
    client: LogitClient | None,
    policy_version: int,
    weights: Any,
    snapshot_dir: str | Path,
    *,
    model_config: Mapping[str, Any] | None = None,
    timeout_s: float | None = None,
) -> PublishedVersion | Path:
    """Writes the snapshot, then registers it when a client is given; returns the version, else the path.

    Raises VersionConflict when the server registered other weights under `policy_version` than those
    written (e.g. `snapshot_dir` is not the server's snapshot directory). `timeout_s` bounds the
    PublishVersion RPC only, not the file writing.
    """
    path = write_snapshot_files(policy_version, weights, snapshot_dir, model_config)
    if client is None:
        return path
    # The directory's name, relative to the server's snapshot dir: trainer and server may mount the
    # shared storage at different paths. That name may find another snapshot there (a leftover of an
    # earlier run when `snapshot_dir` is not the server's): the digest check refuses to take it for ours.
    return client.publish_version(policy_version, path.name, timeout_s=timeout_s, expected_digest=_digest_of(path))


async def publish_async(
    client: AsyncLogitClient | None,
    policy_version: int,
    weights: Any,
    snapshot_dir: str | Path,
    *,
    model_config: Mapping[str, Any] | None = None,
    timeout_s: float | None = None,
) -> PublishedVersion | Path:
    """`publish` for asyncio callers: the file writing runs in a worker thread, off the event loop."""
    path = await asyncio.to_thread(write_snapshot_files, policy_version, weights, snapshot_dir, model_config)
    if client is None:
        return path
    digest = await asyncio.to_thread(_digest_of, path)
    return await client.publish_version(policy_version, path.name, timeout_s=timeout_s, expected_digest=digest)


def _digest_of(path: Path) -> str:
    """The digest of the snapshot just written, which the server must register under its version."""
    from logit_common.snapshots.manifest import read_manifest

    return read_manifest(path).digest

"""Trainer-side client of the old-logit service, the decoupled PPO loss and the in-trainer EWMA.

Importing the package is light (grpc, numpy, the generated API and the shared errors); the asyncio
client loads on first attribute access, the snapshot writer on first publish, the loss modules on
explicit import.
"""

from __future__ import annotations

import importlib
from typing import Any

from logit_common.errors import (
    DeadlineExceeded,
    InvalidRequest,
    LeaseLimit,
    LogitServiceError,
    Overloaded,
    PermissionDenied,
    RegistryError,
    RequestTooLarge,
    ServiceUnavailable,
    SnapshotCorrupt,
    Unauthenticated,
    VersionConflict,
    VersionNotFound,
    VersionOutsideWindow,
)
from logit_common import __version__
from logit_common.types import TokenSource

from .channels import tls_credentials
from .client import LogitClient

# Bound eagerly: a lazily bound `publish` would be shadowed by the `publish` submodule once imported.
from .publish import publish, publish_async
from .requests import (
    ProtocolError,
    ScoreResult,
    SequenceInput,
    SequenceScores,
    SpanScore,
    build_score_request,
    parse_score_response,
    spans_from_versions,
)
from .versions import PublishedVersion, VersionInfoView, VersionsView

# name -> submodule that defines it, imported on first access.
_LAZY = {
    "AsyncLogitClient": "aio",
    "ReplicaRouter": "discovery",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AsyncLogitClient",
    "DeadlineExceeded",
    "InvalidRequest",
    "LeaseLimit",
    "LogitClient",
    "LogitServiceError",
    "Overloaded",
    "ProtocolError",
    "PermissionDenied",
    "PublishedVersion",
    "RegistryError",
    "ReplicaRouter",
    "RequestTooLarge",
    "ScoreResult",
    "SequenceInput",
    "SequenceScores",
    "ServiceUnavailable",
    "SnapshotCorrupt",
    "SpanScore",
    "TokenSource",
    "Unauthenticated",
    "VersionConflict",
    "VersionInfoView",
    "VersionNotFound",
    "VersionOutsideWindow",
    "VersionsView",
    "__version__",
    "build_score_request",
    "parse_score_response",
    "publish",
    "publish_async",
    "spans_from_versions",
    "tls_credentials",
]

"""The error hierarchy shared by server and client: each class carries its gRPC status and retryability.

The server raises these; one interceptor turns them into statuses, each with a google.rpc.ErrorInfo
(`logit_common.rich_status`): `reason` names the class (RequestTooLarge -> REQUEST_TOO_LARGE), and
`metadata` holds what the raising site knew, e.g. the limit that was hit and its value. The client maps
statuses back to the same classes, metadata included.
"""

from __future__ import annotations

import re
from typing import ClassVar

import grpc


def _upper_snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).upper()


class LogitServiceError(Exception):
    """Base of every error the service reports on purpose.

    `metadata` (string keys and values, as ErrorInfo carries them) says what was wrong in fields a
    program can read: where a limit was hit, `limit` (the setting's name), `limit_value` and `value`.
    """

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    retryable: bool = False
    reason: ClassVar[str] = "LOGIT_SERVICE_ERROR"
    """ErrorInfo.reason: the class name in UPPER_SNAKE_CASE, as gRPC's error model asks; set per subclass."""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "reason" not in cls.__dict__:
            cls.reason = _upper_snake(cls.__name__)

    def __init__(self, message: str, **metadata: object) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = {key: str(value) for key, value in metadata.items()}


class InvalidRequest(LogitServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class ModelRejected(InvalidRequest):
    """The snapshot's model cannot be served exactly by this server: its architecture, the attention
    implementation asked for, or its weights do not fit, or no log-prob path matches its own forward."""


class VersionNotFound(LogitServiceError):
    code = grpc.StatusCode.NOT_FOUND


class VersionOutsideWindow(LogitServiceError):
    """The version was published but fell out of the retention window; its weights are gone."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class VersionConflict(LogitServiceError):
    """A version number was published twice with different weights."""

    code = grpc.StatusCode.ALREADY_EXISTS


class SnapshotCorrupt(LogitServiceError):
    """A snapshot's files do not match its manifest; it is never served."""

    code = grpc.StatusCode.DATA_LOSS


class SnapshotUnreadable(SnapshotCorrupt):
    """A snapshot file this server may not read (e.g. mode 0600 written by another user): it cannot be
    verified, so it is neither registered nor served. Fix the permissions; retrying alone cannot help."""


class Unauthenticated(LogitServiceError):
    """The call carried no valid bearer token for a service that requires one."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(LogitServiceError):
    """The token is valid but its role may not call this method (a reader publishing, say)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class RequestTooLarge(LogitServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class LeaseLimit(LogitServiceError):
    """Leases would keep more versions beyond the retention window than the server allows."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Overloaded(LogitServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    retryable = True


class ServiceUnavailable(LogitServiceError):
    code = grpc.StatusCode.UNAVAILABLE
    retryable = True


class CancelledByServer(LogitServiceError):
    """The server side ended the call with CANCELLED before answering, as gRPC does with a call caught
    in a server's shutdown (one that arrived as the server stopped taking calls). Retried like
    UNAVAILABLE. A call the client itself cancelled is not this: gRPC names the local reason."""

    code = grpc.StatusCode.CANCELLED
    retryable = True


class DeadlineExceeded(LogitServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    retryable = True


class NonFiniteLogprobs(LogitServiceError):
    """The forward produced NaN or ±inf log-probs (weights or activations overflowed); such values are
    never returned as exact or EWMA answers. Retrying the same request gives the same result."""

    code = grpc.StatusCode.INTERNAL


class RegistryError(LogitServiceError):
    """The version registry (Redis) could not be reached or answered inconsistently."""

    code = grpc.StatusCode.UNAVAILABLE
    retryable = True


_BY_CODE: dict[grpc.StatusCode, type[LogitServiceError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.NOT_FOUND: VersionNotFound,
    grpc.StatusCode.FAILED_PRECONDITION: VersionOutsideWindow,
    grpc.StatusCode.ALREADY_EXISTS: VersionConflict,
    grpc.StatusCode.DATA_LOSS: SnapshotCorrupt,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.UNAVAILABLE: ServiceUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}


def _subclasses(cls: type[LogitServiceError]) -> list[type[LogitServiceError]]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def error_classes() -> dict[str, type[LogitServiceError]]:
    """Every error class of this module by its ErrorInfo reason."""
    return {cls.reason: cls for cls in [LogitServiceError, *_subclasses(LogitServiceError)] if cls.__module__ == __name__}


def error_from_status(code: grpc.StatusCode, details: str) -> LogitServiceError:
    """The typed error a client raises for a failed RPC that names no error class."""
    cls = _BY_CODE.get(code, LogitServiceError)
    err = cls(details or code.name)
    if cls is LogitServiceError:
        err.code = code
    return err

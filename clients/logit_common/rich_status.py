"""Errors in gRPC's standard rich error model, both ways: a `google.rpc.Status` in the
`grpc-status-details-bin` trailer, holding one `google.rpc.ErrorInfo`.

    domain    "logit_service.v1"
    reason    the error class in UPPER_SNAKE_CASE (RequestTooLarge -> REQUEST_TOO_LARGE)
    metadata  the error's fields (e.g. limit, limit_value, value) and "retryable" ("true"/"false")

Any gRPC client, in any language, can read it (grpcio-status, Go's status.FromError, Java's
StatusProto). Beside it the server still sends the older custom trailer `logit-service-error: <class
name>`, and the client still reads it, so older clients and servers keep telling errors apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from logit_common import errors

ERROR_DOMAIN = "logit_service.v1"
ERROR_CLASS_KEY = "logit-service-error"
"""The older trailer naming the error class (e.g. "RequestTooLarge"); kept for older peers."""
DETAILS_KEY = rpc_status.GRPC_DETAILS_METADATA_KEY  # "grpc-status-details-bin"


MAX_WIRE_MESSAGE_CHARS = 2048
"""The longest error message sent to a caller. The message travels twice (grpc-message and inside the
rich status), and gRPC's default 16 KiB limit on received metadata is a hard one: a longer message (e.g.
transformers' list of every model type) would reach the caller as a dropped stream instead of its status."""


def wire_message(error: errors.LogitServiceError) -> str:
    """The error's message as sent over the wire: cut to MAX_WIRE_MESSAGE_CHARS, saying so."""
    message = error.message
    if len(message) <= MAX_WIRE_MESSAGE_CHARS:
        return message
    cut = len(message) - MAX_WIRE_MESSAGE_CHARS
    return f"{message[:MAX_WIRE_MESSAGE_CHARS]}… ({cut} more characters in the server log)"


def error_info(error: errors.LogitServiceError) -> error_details_pb2.ErrorInfo:
    metadata = dict(error.metadata, retryable="true" if error.retryable else "false")
    return error_details_pb2.ErrorInfo(reason=type(error).reason, domain=ERROR_DOMAIN, metadata=metadata)


def status_proto(error: errors.LogitServiceError, message: str | None = None) -> status_pb2.Status:
    detail = any_pb2.Any()
    detail.Pack(error_info(error))
    return status_pb2.Status(code=error.code.value[0], message=message or wire_message(error), details=[detail])


def trailing_metadata(error: errors.LogitServiceError) -> tuple[tuple[str, Any], ...]:
    """What an abort for `error` sends after the status: the rich status, then the older trailer."""
    return ((DETAILS_KEY, status_proto(error).SerializeToString()), (ERROR_CLASS_KEY, type(error).__name__))


def read_error_info(
    metadata: Iterable[tuple[str, Any]] | None, code: grpc.StatusCode, details: str
) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo of our domain in a failed call's trailers, or None (an older server, a status that
    gRPC itself produced, or a rich status that disagrees with the call's own code or message)."""
    for key, value in metadata or ():
        if key != DETAILS_KEY:
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except Exception:  # DecodeError, or a value that is not bytes: not a status we can trust
            return None
        if status.code != code.value[0] or status.message != details:
            return None  # gRPC's from_call refuses these too: the trailer does not describe this status
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Is(info.DESCRIPTOR) and detail.Unpack(info) and info.domain == ERROR_DOMAIN:
                return info
    return None


def error_class_for(info: error_details_pb2.ErrorInfo, code: grpc.StatusCode) -> type[errors.LogitServiceError] | None:
    """The class an ErrorInfo names, trusted only when its status agrees (so a wrong reason can never
    flip retryability)."""
    cls = errors.error_classes().get(info.reason)
    return cls if cls is not None and cls.code == code else None

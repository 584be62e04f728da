"""Turns the service's typed errors into gRPC statuses, in one place.

Known errors keep their message and code, and carry a google.rpc.Status with an ErrorInfo (reason =
the error class, metadata = its fields; `logit_common.rich_status`) plus the older class-name trailer;
anything else is logged with its stack and reported as INTERNAL without the trace (stack traces never
go to the client). Requests are decoded here too, by the `RequestDecoder` (byte limits and counts
first, off the event loop), so bytes that do not decode answer INVALID_ARGUMENT rather than gRPC's
UNKNOWN, and oversized ones RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

import grpc

from logit_common import rich_status
from logit_common.rich_status import ERROR_CLASS_KEY  # noqa: F401  (its older home; kept importable)
from logit_service.errors import LogitServiceError
from logit_service.server.call_context import note_request, note_versions
from logit_service.server.request_decoding import RequestDecoder

log = logging.getLogger(__name__)


async def abort_with(context: grpc.aio.ServicerContext, error: LogitServiceError) -> None:
    """Ends the call with `error`'s status, its rich status and the older class-name trailer."""
    await context.abort(error.code, rich_status.wire_message(error), trailing_metadata=rich_status.trailing_metadata(error))


async def _end_with_error(context: grpc.aio.ServicerContext, method: str, error: Exception) -> None:
    """Ends a call that raised: the caller's error with its own status, an abort as it was, anything
    else as INTERNAL with the trace in the server log only. Called from the handler's except block."""
    if isinstance(error, grpc.aio.AbortError):
        raise error
    if isinstance(error, LogitServiceError):
        log.info("%s -> %s: %s", method, error.code.name, error.message)
        # The class lets clients tell apart errors sharing a status (too large vs overloaded).
        await abort_with(context, error)
        return
    log.exception("%s failed", method)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log")


def _wrap_unary(
    behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
    method: str,
    deserialize: Callable[[bytes], Any] | None,
    decoder: RequestDecoder,
):
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if deserialize is None:
                return await behavior(request, context)
            decoder.bounds.check_size(method, request)
            # Held until the call ends: a decoded request lives as long as its call.
            with decoder.budget.hold(len(request)):
                request, versions = await decoder.decode(method, request, deserialize)
                note_request(request)
                note_versions(versions)
                return await behavior(request, context)
        except Exception as e:
            await _end_with_error(context, method, e)

    return handler


def _wrap_stream_in(behavior, method: str):
    """Client-streaming calls (UploadVersion): messages are decoded by gRPC, errors mapped here."""

    async def handler(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behavior(request_iterator, context)
        except Exception as e:
            await _end_with_error(context, method, e)

    return handler


def _wrap_stream_out(behavior, method: str):
    """Server-streaming calls (FetchVersion): an error after some messages still ends with its status."""

    async def handler(request: Any, context: grpc.aio.ServicerContext):
        try:
            async for response in behavior(request, context):
                yield response
        except Exception as e:
            await _end_with_error(context, method, e)

    return handler


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, decoder: RequestDecoder) -> None:
        self.decoder = decoder

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith("/grpc."):
            return handler
        method = handler_call_details.method
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_stream_in(handler.stream_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream_out(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_unary is None:
            return handler
        # gRPC hands the raw bytes to the wrapper, which deserializes them under the error mapping.
        return grpc.unary_unary_rpc_method_handler(
            _wrap_unary(handler.unary_unary, handler_call_details.method, handler.request_deserializer, self.decoder),
            request_deserializer=None,
            response_serializer=handler.response_serializer,
        )

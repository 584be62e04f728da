"""Turns the service's typed errors into gRPC statuses, in one place.

Known errors keep their message and code; anything else is logged with its stack and reported as
INTERNAL without the trace (stack traces never go to the client). Requests are deserialized here too,
so bytes that do not decode answer INVALID_ARGUMENT rather than gRPC's UNKNOWN.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

import grpc

from logit_service.errors import InvalidRequest, LogitServiceError
from logit_service.server.call_context import note_request

log = logging.getLogger(__name__)

ERROR_CLASS_KEY = "logit-service-error"


def _wrap_unary(
    behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
    method: str,
    deserialize: Callable[[bytes], Any] | None,
):
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if deserialize is not None:
                try:
                    request = deserialize(request)
                except Exception as e:  # DecodeError: torn bytes, bad UTF-8 in a string field
                    raise InvalidRequest(f"the request bytes do not decode as a {method} request: {e}") from None
                note_request(request)
            return await behavior(request, context)
        except LogitServiceError as e:
            log.info("%s -> %s: %s", method, e.code.name, e.message)
            # The class name lets clients tell apart errors sharing a status (too large vs overloaded).
            await context.abort(e.code, e.message, trailing_metadata=((ERROR_CLASS_KEY, type(e).__name__),))
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("%s failed", method)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log")

    return handler


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or handler_call_details.method.startswith("/grpc."):
            return handler
        # gRPC hands the raw bytes to the wrapper, which deserializes them under the error mapping.
        return grpc.unary_unary_rpc_method_handler(
            _wrap_unary(handler.unary_unary, handler_call_details.method, handler.request_deserializer),
            request_deserializer=None,
            response_serializer=handler.response_serializer,
        )

"""Separate bounds on concurrent API calls and on probes, so that neither can starve the other.

gRPC's own `maximum_concurrent_rpcs` counts every call alike: 64 open `Health.Watch` streams, which
need no credentials, would refuse every scoring call. Here LogitService calls and probes (health,
reflection) each have a limit; a call over its limit is refused at once with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import inspect
from typing import Any

import grpc

from logit_service.errors import Overloaded
from logit_service.server.interceptors import abort_with


class _Slots:
    def __init__(self, limit: int, what: str, setting: str) -> None:
        self.limit = limit
        self.what = what
        self.setting = setting  # the config field that sets the limit, named in the error's metadata
        self.in_use = 0  # only touched on the event loop

    async def refuse(self, context: grpc.aio.ServicerContext) -> None:
        message = f"{self.in_use} {self.what} are already in progress (limit {self.limit}); retry later"
        await abort_with(context, Overloaded(message, limit=self.setting, limit_value=self.limit, value=self.in_use))


class CallLimitInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, *, max_api_calls: int, max_probe_calls: int) -> None:
        self._api = _Slots(max_api_calls, "calls", "max_concurrent_rpcs")
        self._probes = _Slots(max_probe_calls, "health or reflection calls", "max_probe_rpcs")

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        slots = self._probes if handler_call_details.method.startswith("/grpc.") else self._api
        kinds = {
            "unary_unary": grpc.unary_unary_rpc_method_handler,
            "unary_stream": grpc.unary_stream_rpc_method_handler,
            "stream_unary": grpc.stream_unary_rpc_method_handler,
            "stream_stream": grpc.stream_stream_rpc_method_handler,
        }
        for attribute, make in kinds.items():
            behavior = getattr(handler, attribute)
            if behavior is not None:
                streams_out = attribute.endswith("_stream")
                return make(
                    _bounded(behavior, slots, streams_out),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler


def _bounded(behavior, slots: _Slots, streams_out: bool):
    if not streams_out:

        async def unary(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            if slots.in_use >= slots.limit:
                await slots.refuse(context)
            slots.in_use += 1
            try:
                return await behavior(request_or_iterator, context)
            finally:
                slots.in_use -= 1

        return unary

    async def streaming(request_or_iterator: Any, context: grpc.aio.ServicerContext):
        if slots.in_use >= slots.limit:
            await slots.refuse(context)
        slots.in_use += 1
        try:
            result = behavior(request_or_iterator, context)
            if inspect.isasyncgen(result):
                async for message in result:
                    yield message
            else:  # a handler that writes with context.write() and returns nothing
                await result
        finally:
            slots.in_use -= 1

    return streaming

"""A real gRPC aio server in the test's own event loop, on 127.0.0.1, for the server's interceptors.

The interceptors under test are the service's own; behind them sit small handlers registered under the
service's real method names (and the real health service), so a call crosses the wire and the
interceptors see what they see in production, in milliseconds instead of a server process and a model.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from logit_client.retry import error_from_rpc
from logit_service import errors

SERVICE = "logit_service.v1.LogitService"


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


@contextlib.asynccontextmanager
async def serving(
    interceptors: Sequence[grpc.aio.ServerInterceptor], handlers: dict[str, grpc.RpcMethodHandler]
) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to a server running `handlers` (short method name -> handler) behind `interceptors`."""
    server = grpc.aio.server(interceptors=list(interceptors))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(None)


async def unary(channel: grpc.aio.Channel, name: str, payload: bytes = b"", metadata=()) -> bytes:
    """One unary call with raw bytes in and out; a failure raises the typed error the client would."""
    call = channel.unary_unary(method(name), request_serializer=None, response_deserializer=None)
    try:
        return await call(payload, metadata=metadata, timeout=30)
    except grpc.aio.AioRpcError as e:
        raise error_from_rpc(e, "in-process") from None


async def status_of(channel: grpc.aio.Channel, name: str, payload: bytes = b"", metadata=()) -> grpc.StatusCode:
    try:
        await unary(channel, name, payload, metadata)
    except errors.LogitServiceError as e:
        return e.code
    return grpc.StatusCode.OK

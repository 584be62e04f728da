"""One structured line per call, and the per-call metrics, from one interceptor outside all others.

It sits outermost so that refusals by authentication and limits are logged and counted too. It logs
what a call was about (request id, method, status, tokens, versions, duration, peer) and never
metadata values, so a bearer token cannot reach the log.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import grpc

from logit_service.server.call_context import open_call, request_versions
from logit_service.server.metrics import ServiceMetrics

log = logging.getLogger("logit_service.access")

_MAX_VERSIONS_LOGGED = 16
_ROUTE = {1: "exact", 2: "ewma", 3: "unavailable"}  # TokenSource values on the wire


def _request_id(request: Any, metadata: tuple) -> str:
    given = getattr(request, "request_id", "") or dict(metadata or ()).get("x-request-id", "")
    return str(given)[:64] if given else uuid.uuid4().hex[:16]


def _tokens(response: Any) -> int:
    return int(getattr(response, "tokens_scored", 0) or getattr(response, "accepted_tokens", 0) or 0)


class AccessLogInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: ServiceMetrics, *, log_format: str = "text") -> None:
        self.metrics = metrics
        self.log_format = log_format  # "text", "json" or "off" (metrics only)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        behavior = handler.unary_unary
        quiet = self.log_format == "off" or method.startswith("/grpc.")  # probes: counted, not logged

        async def logged(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            call = open_call()
            response = None
            try:
                response = await behavior(request, context)
                return response
            finally:
                seconds = time.perf_counter() - started
                code = context.code() or grpc.StatusCode.OK
                code = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
                if response is None and code == grpc.StatusCode.OK:
                    code = grpc.StatusCode.CANCELLED  # ended without an answer or a status: the caller left
                short = method.rsplit("/", 1)[-1]
                self.metrics.observe_call(short, code.name, seconds)
                if response is not None:
                    self._observe_answer(response)
                if not quiet:
                    decoded = call.get("request", None if isinstance(request, bytes) else request)
                    versions = call.get("versions")
                    if versions is None:
                        versions = request_versions(decoded) if decoded is not None else []
                    self._log(decoded, versions, context, handler_call_details, short, code, seconds, response)

        return grpc.unary_unary_rpc_method_handler(
            logged, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )

    def _observe_answer(self, response: Any) -> None:
        results = getattr(response, "results", None)
        if results is None or not hasattr(response, "spot_check"):
            return
        for result in results:
            for span in result.spans:
                self.metrics.tokens_scored.labels(route=_ROUTE.get(span.source, "other")).inc(span.end - span.start)
        if response.spot_check.tokens_checked:
            self.metrics.spot_check_tokens.inc(response.spot_check.tokens_checked)
            self.metrics.spot_check_error.set(response.spot_check.max_abs_error)

    def _log(self, request, versions: list[int], context, details, method: str, code, seconds: float, response) -> None:
        entry = {
            "request_id": _request_id(request, details.invocation_metadata),
            "method": method,
            "status": code.name,
            "tokens": _tokens(response) if response is not None else 0,
            "versions": versions[:_MAX_VERSIONS_LOGGED] + (["..."] if len(versions) > _MAX_VERSIONS_LOGGED else []),
            "duration_ms": round(seconds * 1000, 3),
            "peer": context.peer(),
        }
        if self.log_format == "json":
            log.info(json.dumps(entry, separators=(",", ":")))
        else:
            log.info(" ".join(f"{k}={v if not isinstance(v, list) else ','.join(map(str, v))}" for k, v in entry.items()))

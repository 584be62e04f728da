"""Turns a call's raw request bytes into its message: byte limit first, then an in-flight byte budget,
then the wire-format counts and the protobuf decode, off the event loop for all but small requests.

Health and metadata calls share the event loop with every decode; a decode on the loop would stall
them for as long as it runs. Requests over the budget of bytes being decoded or served at once are
refused at once (RESOURCE_EXHAUSTED, retryable), so overload costs the server nothing but the refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from logit_service.errors import InvalidRequest, Overloaded
from logit_service.server.call_context import request_versions
from logit_service.server.wire_bounds import RequestBounds

INLINE_DECODE_BYTES = 4 << 10
"""Requests up to this size decode on the loop: microseconds, less than the hop to a thread."""


class RequestBytesBudget:
    """Bytes of requests being decoded or served at once. Only touched on the event loop."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.in_use = 0

    @contextlib.contextmanager
    def hold(self, size: int) -> Iterator[None]:
        if self.in_use and self.in_use + size > self.limit_bytes:
            raise Overloaded(
                f"{self.in_use} bytes of requests are already being decoded or served and {size} more would "
                f"exceed the limit of {self.limit_bytes}; retry later"
            )
        self.in_use += size
        try:
            yield
        finally:
            self.in_use -= size


class RequestDecoder:
    def __init__(self, bounds: RequestBounds, budget: RequestBytesBudget, pool: ThreadPoolExecutor) -> None:
        self.bounds = bounds
        self.budget = budget
        self.pool = pool  # also where the servicer converts and validates sequences

    async def decode(self, method: str, raw: bytes, deserialize: Callable[[bytes], Any]) -> tuple[Any, list[int]]:
        """(message, the policy versions it names); raises before decoding what the bounds refuse.
        Call inside `budget.hold(len(raw))`."""
        if len(raw) <= INLINE_DECODE_BYTES:
            return self._decode(method, raw, deserialize)
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._decode, method, raw, deserialize)

    def _decode(self, method: str, raw: bytes, deserialize: Callable[[bytes], Any]) -> tuple[Any, list[int]]:
        self.bounds.check_counts(method, raw)
        try:
            request = deserialize(raw)
        except Exception as e:  # DecodeError: torn bytes, bad UTF-8 in a string field
            name = method.rsplit("/", 1)[-1]
            raise InvalidRequest(f"the request bytes do not decode as a {name} request: {e}") from None
        return request, request_versions(request)  # for the access log, counted here rather than on the loop

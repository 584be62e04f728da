"""Bearer-token authentication with two roles, checked before any work.

A reader may score, read version metadata and copy a stored version (FetchVersion, what a peer
replica does). A publisher may also change what the service holds or does in the background: publish
versions (by name or streamed), lease them, submit segments and wait on barriers. Health and
reflection stay open so that orchestrators can probe without credentials.

Tokens are compared in constant time. A call with several `authorization` headers is refused rather
than resolved by picking one: a proxy that appends a header must not be able to override the caller's.
The scheme name is case-insensitive (RFC 7235); the token itself is not.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Iterable

import grpc

from logit_service.errors import LogitServiceError, PermissionDenied, Unauthenticated
from logit_service.server.interceptors import abort_with

_SERVICE_PREFIX = "/logit_service.v1.LogitService/"
_PUBLISHER_METHODS = frozenset({"PublishVersion", "UploadVersion", "LeaseVersions", "SubmitSegments", "Barrier"})


class Role(enum.IntEnum):
    READER = 1
    PUBLISHER = 2


def required_role(method: str) -> Role | None:
    """None for methods that need no credentials (health, reflection)."""
    if not method.startswith(_SERVICE_PREFIX):
        return None
    return Role.PUBLISHER if method.removeprefix(_SERVICE_PREFIX) in _PUBLISHER_METHODS else Role.READER


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, *, publisher_tokens: Iterable[str], reader_tokens: Iterable[str] = ()) -> None:
        self._tokens = [(t.encode(), Role.PUBLISHER) for t in publisher_tokens] + [
            (t.encode(), Role.READER) for t in reader_tokens
        ]
        if not self._tokens:
            raise ValueError("token authentication needs at least one token")

    def _role_of(self, token: bytes) -> Role | None:
        role = None
        for expected, candidate in self._tokens:  # every comparison runs: no early exit to time
            if hmac.compare_digest(token, expected):
                role = candidate if role is None else max(role, candidate)
        return role

    async def intercept_service(self, continuation, handler_call_details):
        needed = required_role(handler_call_details.method)
        if needed is None:
            return await continuation(handler_call_details)
        values = [v for k, v in (handler_call_details.invocation_metadata or ()) if k == "authorization"]
        if len(values) != 1:
            why = "no authorization header" if not values else f"{len(values)} authorization headers (send exactly one)"
            return _refusal(Unauthenticated(f"{why}; send 'authorization: Bearer <token>'"))
        scheme, _, token = str(values[0]).partition(" ")
        role = self._role_of(token.strip().encode()) if scheme.lower() == "bearer" else None
        if role is None:
            return _refusal(Unauthenticated("invalid bearer token"))
        if role < needed:
            method = handler_call_details.method.removeprefix(_SERVICE_PREFIX)
            return _refusal(PermissionDenied(f"{method} needs the publisher role; this token is a reader's", method=method))
        return await continuation(handler_call_details)


def _refusal(error: LogitServiceError) -> grpc.RpcMethodHandler:
    async def refuse(request, context: grpc.aio.ServicerContext) -> None:
        await abort_with(context, error)

    # No deserializer: a refused call's bytes are never parsed.
    return grpc.unary_unary_rpc_method_handler(refuse)


def read_tokens(path) -> list[str]:
    """Tokens from a file (one per line; blank lines and # comments skipped), e.g. a mounted secret."""
    from pathlib import Path

    lines = Path(path).read_text().splitlines()
    tokens = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if any(len(t) < 16 for t in tokens):
        raise ValueError(f"{path}: every token must have at least 16 characters")
    return tokens

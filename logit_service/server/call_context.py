"""What the outer interceptors learn about a call from the inner ones, within the call's own task.

Requests are decoded by the innermost interceptor (so that bad bytes map to INVALID_ARGUMENT), yet the
outermost one, the access log, wants to say which versions a call was about. The decoded request is
handed outwards through a context variable: every interceptor awaits the next in the same task.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

_decoded: ContextVar[dict[str, Any] | None] = ContextVar("logit_service_call", default=None)


def open_call() -> dict[str, Any]:
    holder: dict[str, Any] = {}
    _decoded.set(holder)
    return holder


def note_request(request: Any) -> None:
    holder = _decoded.get()
    if holder is not None:
        holder["request"] = request


def note_versions(versions: list[int]) -> None:
    holder = _decoded.get()
    if holder is not None:
        holder["versions"] = versions


def request_versions(request: Any) -> list[int]:
    """The policy versions a request names, ascending."""
    found: set[int] = set()
    for seq in list(getattr(request, "sequences", ())) + list(getattr(request, "segments", ())):
        found.update(s.policy_version for s in seq.spans)
    if hasattr(request, "policy_versions"):
        found.update(request.policy_versions)
    elif hasattr(request, "policy_version"):
        found.add(request.policy_version)
    return sorted(found)

"""The deadline budget, the retry plan and the status-to-error mapping, shared by the sync and async clients.

One client call gets one absolute deadline; every attempt runs with what is left of it, so retries
never extend it. The clients own only the transport (blocking or awaited calls, sleeping).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence

import grpc

from logit_common import errors, rich_status

MIN_ATTEMPT_S = 0.005
"""An attempt with less budget than this cannot do useful work: fail with the last error instead."""
MAX_BACKOFF_S = 2.0
"""Cap on one backoff pause, so a large retry count does not turn into minutes of sleeping."""
DEFAULT_MAX_RETRIES: int | None = None
"""None: retry a retryable failure for as long as the call's deadline allows. A replica restart takes
seconds (more on a loaded machine); a client that gave up after a fixed handful of quick retries would
fail calls that had ample time left."""
DEFAULT_RETRY_BACKOFF_S = 0.1
"""Pauses of 0.1, 0.2, 0.4, 0.8, 1.6, then 2 s each, each shortened at random by up to half."""
ERROR_CLASS_KEY = rich_status.ERROR_CLASS_KEY
"""The older trailing-metadata key naming the server's error class (e.g. "RequestTooLarge"), read when a
server sends no rich status (servers before the rich error model).

Some status codes carry two classes (RESOURCE_EXHAUSTED: RequestTooLarge, not retryable, and
Overloaded, retryable); the class tells them apart. Without either the status code decides.
"""


class Deadline:
    """An absolute point in time, measured on a monotonic clock."""

    def __init__(self, budget_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not budget_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {budget_s}")
        self.budget_s = budget_s
        self._clock = clock
        self._expires_at = clock() + budget_s

    def remaining(self) -> float:
        return max(0.0, self._expires_at - self._clock())


class RetryPlan:
    """Which target each attempt goes to, with how much time, and whether and when to try again.

    Attempt k goes to targets[k % len(targets)], so a retry always lands on the next target.
    """

    def __init__(
        self,
        targets: Sequence[str],
        deadline: Deadline,
        *,
        max_retries: int | None,
        backoff_s: float,
        max_backoff_s: float = MAX_BACKOFF_S,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if not targets:
            raise ValueError("no target to send the call to")
        self.targets = list(targets)
        self.deadline = deadline
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._jitter = jitter
        self.attempts = 0

    def next_attempt(self) -> tuple[str, float]:
        """The target of the next attempt and its timeout (the whole remaining budget)."""
        target = self.targets[self.attempts % len(self.targets)]
        self.attempts += 1
        return target, self.deadline.remaining()

    def backoff_after(self, error: errors.LogitServiceError) -> float | None:
        """Seconds to wait before the next attempt, or None when `error` should be raised now."""
        if not error.retryable or (self.max_retries is not None and self.attempts > self.max_retries):
            return None
        base = min(self.max_backoff_s, self.backoff_s * 2 ** (self.attempts - 1))
        # Half fixed, half random: replicas that failed together are not all retried in lockstep.
        delay = base * (0.5 + 0.5 * self._jitter())
        if self.deadline.remaining() - delay < MIN_ATTEMPT_S:
            return None
        return delay


def _error_class(trailing_metadata: object, code: grpc.StatusCode) -> type[errors.LogitServiceError] | None:
    for key, value in trailing_metadata or ():
        if key == ERROR_CLASS_KEY:
            cls = getattr(errors, str(value), None)
            # Trust the name only when it agrees with the status, so a typo cannot flip retryability.
            if isinstance(cls, type) and issubclass(cls, errors.LogitServiceError) and cls.code == code:
                return cls
    return None


# What gRPC's client library says when the client itself ended a call: its own cancel, or a request it
# could not iterate or serialize, or a response it could not parse. Any other CANCELLED came from the
# other side (a server that stopped with the call just arrived, whose status has no details).
_LOCAL_CANCELLATIONS = frozenset({
    "Locally cancelled by application!",
    "Exception iterating requests!",
    "Exception serializing request!",
    "Exception deserializing response!",
})


def error_from_rpc(rpc_error: grpc.RpcError, target: str) -> errors.LogitServiceError:
    """The typed error for a failed attempt (sync or aio), tagged with the target that failed.

    The class comes from the rich status's ErrorInfo (its metadata becomes the error's), else from the
    older class-name trailer, else from the status code.
    """
    code = rpc_error.code() if callable(getattr(rpc_error, "code", None)) else None
    code = code or grpc.StatusCode.UNKNOWN
    details = (rpc_error.details() if callable(getattr(rpc_error, "details", None)) else None) or ""
    trailing = rpc_error.trailing_metadata() if callable(getattr(rpc_error, "trailing_metadata", None)) else ()
    info = rich_status.read_error_info(trailing, code, details)
    cls = rich_status.error_class_for(info, code) if info is not None else None
    if cls is None:
        cls = _error_class(trailing, code)
    if cls is None and code == grpc.StatusCode.CANCELLED and details not in _LOCAL_CANCELLATIONS:
        cls = errors.CancelledByServer
    if cls is None and code == grpc.StatusCode.RESOURCE_EXHAUSTED and "message larger than max" in details:
        # gRPC's own size check ("Received message larger than max (N vs. M)"): retrying cannot help.
        cls = errors.RequestTooLarge
    error = cls(details or code.name) if cls else errors.error_from_status(code, details)
    if info is not None:
        error.metadata = {k: v for k, v in info.metadata.items() if k != "retryable"}  # the class says that
    error.target = target
    return error

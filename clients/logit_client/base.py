"""What the sync and asyncio clients share: settings, target ordering, channels, and per-call plans."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import grpc

from . import calls
from .batching import split_batch
from .calls import Call
from .requests import ScoreResult, SequenceInput
from .channels import ChannelPool
from .retry import MIN_ATTEMPT_S, Deadline, RetryPlan
from .routing import Router, TargetOrder

logger = logging.getLogger(__name__)

Metadata = Sequence[tuple[str, str | bytes]]


class ClientBase:
    def __init__(
        self,
        targets: str | Sequence[str],
        *,
        timeout_s: float,
        max_retries: int | None,
        retry_backoff_s: float,
        max_message_bytes: int,
        metadata: Metadata | None,
        router: Router | None,
        credentials: grpc.ChannelCredentials | None,
        aio: bool,
        auth_token: str | None = None,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if max_retries is not None and max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if retry_backoff_s < 0:
            raise ValueError(f"retry_backoff_s must be >= 0, got {retry_backoff_s}")
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        self._order = TargetOrder(targets, router)
        bearer = (("authorization", f"Bearer {auth_token}"),) if auth_token else ()
        self._metadata = tuple(metadata or ()) + bearer
        self._pool = ChannelPool(max_message_bytes, aio=aio, credentials=credentials)

    @property
    def targets(self) -> list[str]:
        return list(self._order.targets)

    def _plan(self, call: Call[Any], timeout_s: float | None, target: str | None = None) -> RetryPlan:
        targets = [target] if target else self._order.for_versions(call.policy_versions)
        return RetryPlan(
            targets,
            Deadline(self.timeout_s if timeout_s is None else timeout_s),
            max_retries=self.max_retries,
            backoff_s=self.retry_backoff_s,
        )

    def _score_calls(
        self, sequences: Iterable[SequenceInput], max_call_tokens: int, timeout_s: float | None, **options: Any
    ) -> tuple[list[Call[ScoreResult]], Deadline]:
        """One Score call per bounded group of the batch, and the deadline they all share."""
        groups = split_batch(list(sequences), max_call_tokens)
        deadline = Deadline(self.timeout_s if timeout_s is None else timeout_s)
        return [calls.score(group, **options) for group in groups], deadline

    @staticmethod
    def _remaining(deadline: Deadline) -> float:
        return max(deadline.remaining(), MIN_ATTEMPT_S)

    def _send(self, call: Call[Any], target: str, attempt_timeout_s: float) -> Any:
        """Starts one attempt: a response (sync) or an awaitable (aio)."""
        method = getattr(self._pool.stub(target, call.service), call.method)
        return method(call.request, timeout=attempt_timeout_s, metadata=self._metadata or None)

    @staticmethod
    def _log_retry(call: Call[Any], target: str, error: Exception, delay_s: float) -> None:
        logger.info("%s on %s failed (%s: %s); retrying in %.3fs", call.method, target,
                    type(error).__name__, error, delay_s)

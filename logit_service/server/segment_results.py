"""Answers kept for submitted segments (the dedicated old-logit model strategy), under a token budget.

An answer is kept per sample, version, temperature and span, with a digest of every token up to the
span's end, so it is only ever reused for exactly the tokens it was computed on. A requested span is
answered when kept segments tile it end to end: a trajectory scored with one span per version finds
the segments its rollout submitted one interruption at a time.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from logit_service.types import ScoreSequence, Span


@dataclass(frozen=True)
class KeptAnswer:
    end: int
    prefix_digest: bytes
    logprobs: np.ndarray  # float32 [end - start]
    served_version: int
    snapshot_digest: str


def prefix_digest(token_ids: np.ndarray, end: int) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(token_ids[:end], dtype="<i8").tobytes(), digest_size=16).digest()


# Python objects around one kept answer (key tuple, record, digest, array header, the dict's slot):
# tracemalloc counts ~310 bytes besides the sample id and the log-prob array (~110 + 4 per token);
# rounded up, so a bound in bytes cannot be outrun by many tiny answers.
_ENTRY_OVERHEAD_BYTES = 768


def _entry_bytes(sample_id: str, tokens: int) -> int:
    return _ENTRY_OVERHEAD_BYTES + len(sample_id.encode("utf-8", "surrogatepass")) + 4 * tokens


class SegmentResults:
    def __init__(self, max_tokens: int, *, max_bytes: int = 1 << 62) -> None:
        self.max_tokens = max_tokens
        self.max_bytes = max_bytes  # many short segments with long sample ids cost more than their tokens
        # (sample_id, version, temperature, start) -> kept answer; LRU order for the budgets
        self._entries: OrderedDict[tuple, KeptAnswer] = OrderedDict()
        self._tokens = 0
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def used_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def put(self, sequence: ScoreSequence, span: Span, temperature: float, answer_logprobs: np.ndarray,
            served_version: int, snapshot_digest: str) -> None:  # fmt: skip
        size = span.length
        cost = _entry_bytes(sequence.sample_id, size)
        if size > self.max_tokens or cost > self.max_bytes:
            return
        key = (sequence.sample_id, span.policy_version, float(temperature), span.start)
        kept = KeptAnswer(
            span.end, prefix_digest(sequence.token_ids, span.end), np.asarray(answer_logprobs, np.float32),
            served_version, snapshot_digest,
        )  # fmt: skip
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._tokens -= len(old.logprobs)
                self._bytes -= _entry_bytes(key[0], len(old.logprobs))
            self._entries[key] = kept
            self._tokens += size
            self._bytes += cost
            while self._tokens > self.max_tokens or self._bytes > self.max_bytes:  # least recently used first
                dropped_key, dropped = self._entries.popitem(last=False)
                self._tokens -= len(dropped.logprobs)
                self._bytes -= _entry_bytes(dropped_key[0], len(dropped.logprobs))

    def lookup(self, sequence: ScoreSequence, span: Span, temperature: float) -> tuple[np.ndarray, int, str] | None:
        """(log-probs, served version, digest) for the span if kept segments tile it exactly, else None."""
        parts, position = [], span.start
        with self._lock:
            while position < span.end:
                kept = self._entries.get((sequence.sample_id, span.policy_version, float(temperature), position))
                if kept is None or kept.end > span.end or kept.prefix_digest != prefix_digest(sequence.token_ids, kept.end):
                    return None
                parts.append(kept)
                position = kept.end
            for kept in parts:
                self._entries.move_to_end((sequence.sample_id, span.policy_version, float(temperature), kept.end - len(kept.logprobs)))
        digests = {p.snapshot_digest for p in parts}
        if len(digests) != 1:  # one version names one set of weights; anything else is not one answer
            return None
        return np.concatenate([p.logprobs for p in parts]), parts[0].served_version, parts[0].snapshot_digest

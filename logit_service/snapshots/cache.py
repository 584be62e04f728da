"""A CPU-RAM LRU cache of verified version weights under a byte budget."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class CachedWeights:
    key: str
    digest: str
    state_dict: dict[str, "torch.Tensor"]
    nbytes: int
    # Weights file name -> (sha256, its verified bytes): the buffers the state dict's tensors are views
    # of (no extra memory), kept so a neighbour's delta can be restored against them without a disk read.
    files: dict[str, tuple[str, "torch.Tensor"]] = field(default_factory=dict)


def state_dict_nbytes(state_dict: dict[str, "torch.Tensor"]) -> int:
    return sum(t.numel() * t.element_size() for t in state_dict.values())


class WeightCache:
    # Kept by hand on an OrderedDict rather than cachetools.LRUCache(getsizeof=...): callers read the
    # keys in recency order (the scoring order and the tests rely on it), which LRUCache keeps private,
    # and an entry over the whole budget is skipped here where LRUCache raises; the lock and the hit
    # counters would be needed around it all the same.
    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[str, CachedWeights] = OrderedDict()
        self._lock = threading.Lock()
        self._used_bytes = 0
        self.hits = 0  # lookups since start, for the metrics
        self.misses = 0

    def get(self, key: str) -> CachedWeights | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
            return entry

    def peek(self, key: str) -> CachedWeights | None:
        """The entry, if held, without counting a lookup or refreshing its place."""
        with self._lock:
            return self._entries.get(key)

    def put(self, entry: CachedWeights) -> None:
        if entry.nbytes > self.budget_bytes:
            return  # would evict everything else and still not fit
        with self._lock:
            self._remove(entry.key)
            self._entries[entry.key] = entry
            self._used_bytes += entry.nbytes
            while self._used_bytes > self.budget_bytes:
                _, oldest = self._entries.popitem(last=False)
                self._used_bytes -= oldest.nbytes

    def drop(self, key: str) -> None:
        with self._lock:
            self._remove(key)

    def _remove(self, key: str) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._used_bytes -= old.nbytes

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    @property
    def used_bytes(self) -> int:
        return self._used_bytes

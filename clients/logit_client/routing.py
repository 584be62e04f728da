"""Which replicas a call should try, in order: version-affine preferences first, then round-robin.

The client does not discover replicas itself; a `Router` (e.g. one reading the registry's
resident versions) tells it where the versions of a call are already in memory.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence

Router = Callable[[set[int]], list[str]]
"""(policy_versions of a call) -> targets in order of preference; may name targets beyond the client's."""


class TargetOrder:
    """Orders targets for each call: the router's preference, then the rest in round-robin rotation."""

    def __init__(self, targets: str | Sequence[str], router: Router | None = None) -> None:
        self.targets = [targets] if isinstance(targets, str) else list(targets)
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ValueError(f"targets must be one or more non-empty 'host:port' strings, got {targets!r}")
        self._router = router
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def for_versions(self, policy_versions: frozenset[int]) -> list[str]:
        with self._lock:
            shift = next(self._counter) % len(self.targets)
        rotation = self.targets[shift:] + self.targets[:shift]
        if self._router is None or not policy_versions:
            return rotation
        preferred = list(dict.fromkeys(self._router(set(policy_versions))))
        # Any replica can load any retained version, so the others stay as fallbacks after the preferred.
        return preferred + [t for t in rotation if t not in preferred]

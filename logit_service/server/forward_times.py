"""What past forwards say about how long the next one must take at least.

A request is refused before any work only when this lower bound exceeds the time left; otherwise it
starts, and the stop check between layers ends it if the deadline passes. Under a cost of
`overhead + per_token × n` (attention only adds to it), a job of n tokens takes at least as long as
a smaller job took, and at least `t × n / m` of a larger job of m tokens that took t. A tiny call is
overhead-bound, so a linear extrapolation from it would wrongly refuse large calls; the bounds above
never extrapolate upwards. The fastest time per size bucket is kept because contention on the
machine only ever makes a measurement slower.
"""

from __future__ import annotations


class ForwardTimes:
    def __init__(self) -> None:
        self._fastest: dict[int, tuple[int, float]] = {}  # log2 bucket → (tokens, seconds) of its fastest rate

    def record(self, tokens: int, seconds: float) -> None:
        if tokens <= 0 or seconds <= 0:
            return
        bucket = tokens.bit_length()
        best = self._fastest.get(bucket)
        if best is None or seconds / tokens < best[1] / best[0]:
            self._fastest[bucket] = (tokens, seconds)

    def lower_bound_s(self, tokens: int) -> float:
        bound = 0.0
        for measured_tokens, seconds in self._fastest.values():
            bound = max(bound, seconds * tokens / measured_tokens if measured_tokens >= tokens else seconds)
        return bound

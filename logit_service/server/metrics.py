"""Prometheus metrics of one replica, served over HTTP at /metrics on their own port.

Per-call figures (calls and latency by method and status, tokens scored, the EWMA spot-check error)
are recorded by the access-log interceptor as calls end. Everything that is state rather than an
event (cache bytes and hit rate, loads, swaps, versions, leases, pending segments, queue depth) is
read from the live objects when Prometheus scrapes, so the hot paths keep plain counters only.
Each server has its own registry: several servers in one process (tests, the demo) never mix.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger(__name__)

_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.calls = Counter(
            "logit_service_calls", "RPCs answered, by method and gRPC status", ["method", "code"], registry=self.registry
        )
        self.latency = Histogram(
            "logit_service_call_seconds", "RPC duration in seconds, by method", ["method"],
            buckets=_LATENCY_BUCKETS_S, registry=self.registry,
        )  # fmt: skip
        self.tokens_scored = Counter(
            "logit_service_tokens_scored", "Token positions answered by Score, by source of the answer",
            ["route"], registry=self.registry,
        )  # fmt: skip
        self.spot_check_error = Gauge(
            "logit_service_ewma_spot_check_max_abs_error",
            "Largest |EWMA − exact| log-prob error in the last spot check (nats)", registry=self.registry,
        )  # fmt: skip
        self.spot_check_tokens = Counter(
            "logit_service_ewma_spot_check_tokens", "EWMA-answered tokens checked against their exact version",
            registry=self.registry,
        )  # fmt: skip

    def observe_call(self, method: str, code: str, seconds: float) -> None:
        self.calls.labels(method=method, code=code).inc()
        self.latency.labels(method=method).observe(seconds)

    def bind_state(self, read_state: Callable[[], "ReplicaState"]) -> None:
        self.registry.register(_StateCollector(read_state))


@dataclass
class ReplicaState:
    """What the collector reports at scrape time; filled by the app from its live objects."""

    cache_bytes: int
    cache_budget_bytes: int
    cache_hits: int
    cache_misses: int
    loads: int
    load_seconds: float
    load_bytes: int
    swaps: int
    swap_seconds: float
    resident_versions: int
    retained_versions: int | None  # None when the registry cannot be reached
    leased_versions: int | None
    pending_segment_tokens: int
    kept_segments: int
    queue_depth: int
    score_batches: int = 0
    batched_score_calls: int = 0
    prefetches_started: int = 0
    prefetches_used: int = 0
    tile_rows_forwarded: int = 0
    tile_rows_used: int = 0


class _StateCollector:
    def __init__(self, read_state: Callable[[], ReplicaState]) -> None:
        self._read_state = read_state

    def describe(self) -> list[Any]:
        return []  # read at scrape time only; describing would call into the live objects at registration

    def collect(self) -> Iterator[Any]:
        try:
            s = self._read_state()
        except Exception:  # a scrape must never take the replica down
            log.warning("could not read replica state for /metrics", exc_info=True)
            return
        yield _gauge("logit_service_cache_bytes", "Bytes of version weights held in the RAM cache", s.cache_bytes)
        yield _gauge("logit_service_cache_budget_bytes", "Byte budget of the RAM cache", s.cache_budget_bytes)
        yield _counter("logit_service_cache_hits", "Weight loads answered from the RAM cache", s.cache_hits)
        yield _counter("logit_service_cache_misses", "Weight loads that went to disk", s.cache_misses)
        lookups = s.cache_hits + s.cache_misses
        yield _gauge("logit_service_cache_hit_ratio", "Cache hits over lookups since start", s.cache_hits / lookups if lookups else 0.0)
        yield _counter("logit_service_snapshot_loads", "Verified snapshot loads from disk", s.loads)
        yield _counter("logit_service_snapshot_load_seconds", "Seconds spent in verified snapshot loads", s.load_seconds)
        yield _counter("logit_service_snapshot_load_bytes", "Bytes of weights read by snapshot loads", s.load_bytes)
        yield _counter("logit_service_weight_swaps", "Times other weights were copied into the model", s.swaps)
        yield _counter("logit_service_weight_swap_seconds", "Seconds spent copying weights into the model", s.swap_seconds)
        yield _gauge("logit_service_resident_versions", "Versions whose weights are in RAM", s.resident_versions)
        if s.retained_versions is not None:
            yield _gauge("logit_service_retained_versions", "Versions in the window or leased", s.retained_versions)
        if s.leased_versions is not None:
            yield _gauge("logit_service_leased_versions", "Versions held by at least one live lease", s.leased_versions)
        yield _gauge("logit_service_pending_segment_tokens", "Submitted segment tokens waiting to be scored", s.pending_segment_tokens)
        yield _gauge("logit_service_kept_segments", "Kept answers of scored segments", s.kept_segments)
        yield _gauge("logit_service_compute_queue_depth", "Calls waiting for the model", s.queue_depth)
        yield _counter("logit_service_score_batches", "Engine calls that answered Score calls (several callers share one)", s.score_batches)
        yield _counter("logit_service_batched_score_calls", "Score calls answered through those engine calls", s.batched_score_calls)
        yield _counter("logit_service_prefetches_started", "Versions read ahead while another was scored", s.prefetches_started)
        yield _counter("logit_service_prefetches_used", "Read-ahead versions a forward then used", s.prefetches_used)
        yield _counter("logit_service_tile_rows_forwarded", "Rows of fixed-shape tiles forwarded, dummy rows included", s.tile_rows_forwarded)
        yield _counter("logit_service_tile_rows_used", "Rows of those tiles that held a sequence (the rest were padding)", s.tile_rows_used)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)

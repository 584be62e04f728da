"""docs/metrics.md lists exactly the metrics a replica exposes, with their types and help texts."""

from __future__ import annotations

import dataclasses

from logit_service.server.metrics import ReplicaState, ServiceMetrics
from tests.helpers import documented_metrics


def _exposed() -> list[tuple[str, str, str]]:
    metrics = ServiceMetrics()
    metrics.bind_state(lambda: ReplicaState(**{f.name: 1 for f in dataclasses.fields(ReplicaState)}))
    return [
        (family.name + ("_total" if family.type == "counter" else ""), family.type, family.documentation)
        for family in metrics.registry.collect()
    ]


def test_the_reference_lists_every_exposed_metric_with_its_type_and_meaning():
    assert len(documented_metrics()) == 27
    assert documented_metrics() == _exposed()


def test_each_state_metric_reports_its_own_field():
    # Every field of the state set to a distinct value: a metric reading another field shows at once.
    values = {f.name: 10 + i for i, f in enumerate(dataclasses.fields(ReplicaState))}
    values.update(cache_hits=3, cache_misses=1)
    metrics = ServiceMetrics()
    metrics.bind_state(lambda: ReplicaState(**values))
    sample = metrics.registry.get_sample_value
    expected = {
        "logit_service_cache_bytes": values["cache_bytes"],
        "logit_service_cache_budget_bytes": values["cache_budget_bytes"],
        "logit_service_cache_hits_total": 3,
        "logit_service_cache_misses_total": 1,
        "logit_service_cache_hit_ratio": 0.75,
        "logit_service_snapshot_loads_total": values["loads"],
        "logit_service_snapshot_load_seconds_total": values["load_seconds"],
        "logit_service_snapshot_load_bytes_total": values["load_bytes"],
        "logit_service_weight_swaps_total": values["swaps"],
        "logit_service_weight_swap_seconds_total": values["swap_seconds"],
        "logit_service_resident_versions": values["resident_versions"],
        "logit_service_retained_versions": values["retained_versions"],
        "logit_service_leased_versions": values["leased_versions"],
        "logit_service_pending_segment_tokens": values["pending_segment_tokens"],
        "logit_service_kept_segments": values["kept_segments"],
        "logit_service_compute_queue_depth": values["queue_depth"],
        "logit_service_score_batches_total": values["score_batches"],
        "logit_service_batched_score_calls_total": values["batched_score_calls"],
        "logit_service_prefetches_started_total": values["prefetches_started"],
        "logit_service_prefetches_used_total": values["prefetches_used"],
        "logit_service_tile_rows_forwarded_total": values["tile_rows_forwarded"],
        "logit_service_tile_rows_used_total": values["tile_rows_used"],
    }
    assert {name: sample(name) for name in expected} == expected


def test_no_lookups_yet_is_a_hit_ratio_of_zero_and_an_unreachable_registry_leaves_its_gauges_out():
    values = {f.name: 0 for f in dataclasses.fields(ReplicaState)}
    values.update(retained_versions=None, leased_versions=None)
    metrics = ServiceMetrics()
    metrics.bind_state(lambda: ReplicaState(**values))
    assert metrics.registry.get_sample_value("logit_service_cache_hit_ratio") == 0.0
    assert metrics.registry.get_sample_value("logit_service_retained_versions") is None
    assert metrics.registry.get_sample_value("logit_service_leased_versions") is None
    assert metrics.registry.get_sample_value("logit_service_compute_queue_depth") == 0.0


def test_a_state_that_cannot_be_read_leaves_the_call_metrics_and_logs_why(caplog):
    metrics = ServiceMetrics()

    def broken() -> ReplicaState:
        raise RuntimeError("the store is gone")

    metrics.bind_state(broken)
    metrics.observe_call("Score", "OK", 0.003)
    with caplog.at_level("WARNING", logger="logit_service.server.metrics"):
        names = [family.name for family in metrics.registry.collect()]
    assert "logit_service_calls" in names and "logit_service_cache_bytes" not in names
    assert metrics.registry.get_sample_value("logit_service_calls_total", {"method": "Score", "code": "OK"}) == 1.0
    assert metrics.registry.get_sample_value("logit_service_call_seconds_bucket", {"method": "Score", "le": "0.005"}) == 1.0
    assert metrics.registry.get_sample_value("logit_service_call_seconds_bucket", {"method": "Score", "le": "0.0025"}) == 0.0
    assert "could not read replica state for /metrics" in caplog.text

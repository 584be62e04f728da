"""/metrics is scraped over real HTTP from a real server, and every call leaves one access-log line."""

from __future__ import annotations

import json
import logging
import time

import grpc
import pytest

from logit_client import LogitClient, SequenceInput
from logit_service import errors
from tests.helpers import random_tokens, scrape_metrics

TOKEN = "s3cret-token-of-the-test-0123456789"


@pytest.fixture
def server(make_server, snapshot_dir, trained):
    server = make_server(snapshot_dir, retention_window=2, metrics_port=0, access_log="json", auth_token=TOKEN)
    with LogitClient(server.address, auth_token=TOKEN) as client:
        for version in range(2):
            client.publish(version, trained.states[version], snapshot_dir, model_config=trained.config)
    return server


def test_metrics_count_calls_tokens_loads_and_state(server):
    before = scrape_metrics(server)
    tokens = random_tokens(40, seed=1)
    with LogitClient(server.address) as anonymous, pytest.raises(errors.LogitServiceError) as info:
        anonymous.score([SequenceInput(tokens, spans=((1, 1, 40),))])
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    # A refusal is counted just after its status is sent; the calls below end after it on the same loop,
    # and a successful call is counted before its answer leaves.
    with LogitClient(server.address, auth_token=TOKEN) as client:
        client.score([SequenceInput(tokens, spans=((0, 1, 20), (1, 20, 40)))])
        client.score([SequenceInput(tokens, spans=((1, 1, 40),))])
    after = scrape_metrics(server)

    ok = 'logit_service_calls_total{code="OK",method="Score"}'
    assert after[ok] - before.get(ok, 0) == 2
    assert after['logit_service_calls_total{code="UNAUTHENTICATED",method="Score"}'] >= 1
    assert after['logit_service_tokens_scored_total{route="exact"}'] - before.get('logit_service_tokens_scored_total{route="exact"}', 0) == 39 + 39
    assert after['logit_service_call_seconds_count{method="Score"}'] >= 2
    assert after["logit_service_snapshot_loads_total"] >= 2  # both versions came from disk once
    assert after["logit_service_snapshot_load_bytes_total"] > 0
    # Version 0 became resident when its first publish built the model; scoring version 1 swapped it in.
    assert after["logit_service_weight_swaps_total"] - before.get("logit_service_weight_swaps_total", 0) >= 1
    assert after["logit_service_retained_versions"] == 2
    assert after["logit_service_leased_versions"] == 0
    assert after["logit_service_cache_bytes"] > 0
    assert 0.0 <= after["logit_service_cache_hit_ratio"] <= 1.0
    assert after["logit_service_compute_queue_depth"] == 0


def _wait_for_lines(caplog, method: str, count: int, timeout_s: float = 10.0) -> list[dict]:
    """The server writes a line once the call has ended, which may be just after the client saw it end."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "logit_service.access"]
        found = [entry for entry in lines if entry["method"] == method]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def test_every_call_leaves_one_json_line_without_secrets(server, caplog):
    tokens = random_tokens(30, seed=2)
    with caplog.at_level(logging.INFO, logger="logit_service.access"):
        with LogitClient(server.address, auth_token=TOKEN) as client:
            client.score([SequenceInput(tokens, spans=((1, 1, 30),), sample_id="a")])
            with pytest.raises(errors.VersionNotFound):
                client.score([SequenceInput(tokens, spans=((7, 1, 30),))])
        scores = _wait_for_lines(caplog, "Score", 2)
    assert [e["status"] for e in scores] == ["OK", "NOT_FOUND"]
    assert scores[0]["tokens"] == 29 and scores[0]["versions"] == [1]
    assert scores[1]["versions"] == [7]
    for entry in scores:
        assert set(entry) == {"request_id", "method", "status", "tokens", "versions", "duration_ms", "peer"}
        assert entry["request_id"] and entry["peer"] and entry["duration_ms"] >= 0
    assert all(TOKEN not in r.getMessage() for r in caplog.records)


def test_the_shipped_dashboard_queries_only_metrics_the_server_exposes(server):
    import re
    from pathlib import Path

    dashboard = json.loads((Path(__file__).resolve().parents[2] / "deploy" / "grafana-dashboard.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"logit_service_\w+", target["expr"])
    }
    with LogitClient(server.address, auth_token=TOKEN) as client:
        client.score([SequenceInput(random_tokens(10, seed=3), spans=((1, 1, 10),))])
    exposed = {name.split("{")[0] for name in scrape_metrics(server)}
    assert queried and queried <= exposed, f"the dashboard queries metrics the server does not expose: {sorted(queried - exposed)}"

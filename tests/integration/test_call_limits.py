"""Concurrent-call limits: the API's and the probes' are apart, and each refuses at once when full."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from logit_client import LogitClient, SequenceInput
from logit_service import errors
from tests.helpers import random_tokens


@pytest.fixture
def server(make_server, snapshot_dir, trained):
    server = make_server(snapshot_dir, max_concurrent_rpcs=2, max_probe_rpcs=4)
    with LogitClient(server.address) as client:
        client.publish(0, trained.states[0], snapshot_dir, model_config=trained.config)
    return server


def test_open_health_watches_cannot_starve_the_api(server):
    channel = grpc.insecure_channel(server.address)
    health = health_pb2_grpc.HealthStub(channel)
    watches = [health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30) for _ in range(10)]
    outcomes = []
    for watch in watches:
        try:
            outcomes.append(next(watch).status)
        except grpc.RpcError as e:
            outcomes.append(e.code())
    try:
        assert outcomes.count(health_pb2.HealthCheckResponse.SERVING) == 4
        assert outcomes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 6
        with LogitClient(server.address, max_retries=0) as client:  # every API slot is still free
            for _ in range(3):
                assert [v.policy_version for v in client.list_versions().versions] == [0]
    finally:
        for watch in watches:
            watch.cancel()
        channel.close()


def test_calls_over_the_api_limit_are_refused_at_once(server):
    with LogitClient(server.address) as client:
        client.score([SequenceInput(random_tokens(8, seed=0), spans=((0, 1, 8),))])  # builds the model
    release = threading.Event()
    started = threading.Event()

    def stall(_module, _args):
        started.set()
        release.wait(120)  # released at once when the test ends; long only for a loaded machine

    handle = server.running.engine.backend.model.model.layers[0].register_forward_pre_hook(stall)
    results: list[object] = []

    def score():
        # Default retries: the second call may meet a probe holding the last slot, be refused, and retry.
        with LogitClient(server.address, timeout_s=120) as client:
            results.append(client.score([SequenceInput(random_tokens(16, seed=1), spans=((0, 1, 16),))]))

    threads = [threading.Thread(target=score) for _ in range(2)]
    try:
        threads[0].start()
        assert started.wait(30), "the first call never reached the model"
        threads[1].start()  # waits for the compute thread: in progress, holding the second slot
        deadline = time.monotonic() + 120
        refused = None
        with LogitClient(server.address, max_retries=0, timeout_s=30) as client:
            while refused is None and time.monotonic() < deadline:
                try:
                    client.list_versions()  # succeeds until the second call holds its slot
                    time.sleep(0.02)
                except errors.Overloaded as e:
                    refused = e
        assert refused is not None and "limit 2" in refused.message
    finally:
        release.set()
        for thread in threads:
            thread.join(60)
        handle.remove()
    assert len(results) == 2  # both held calls finished normally

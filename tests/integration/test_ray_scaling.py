"""Scaling replicas on a real local Ray cluster: each replica registers in Redis and serves exactly."""

from __future__ import annotations

import time

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the `ray` extra is not installed")

from logit_client import LogitClient, ReplicaRouter, SequenceInput  # noqa: E402
from logit_service.config import ServerConfig  # noqa: E402
from logit_service.registry.redis import RedisRegistry  # noqa: E402
from logit_service.scaling.ray_replicas import RayReplicaSet  # noqa: E402
from tests.helpers import random_tokens  # noqa: E402


@pytest.fixture(scope="module")
def ray_cluster():
    # Every server a test starts binds loopback only, Ray's node included.
    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 * 2**20,
        _node_ip_address="127.0.0.1",
    )
    yield
    ray.shutdown()


CALL_TIMEOUT_S = 300.0  # generous: a replica's first publish builds its model, slowly on busy cores


def _wait(predicate, timeout_s: float = 120.0) -> None:  # generous: replicas start slowly on busy cores
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_replicas_scale_up_and_down_and_serve_exactly(ray_cluster, redis_url, snapshot_dir, trained):
    namespace = "ray-scaling"
    config = ServerConfig(
        snapshot_dir=snapshot_dir, redis_url=redis_url, redis_namespace=namespace, heartbeat_s=0.2, ewma_enabled=False
    )
    replica_set = RayReplicaSet(config, num_cpus=0.25)
    registry = RedisRegistry(redis_url, namespace=namespace)
    try:
        addresses = replica_set.scale(2)
        assert len(set(addresses)) == 2
        _wait(lambda: {r.address for r in registry.replicas()} == set(addresses))

        router = ReplicaRouter(registry, refresh_s=0.0)
        with LogitClient(router.addresses(), router=router, timeout_s=CALL_TIMEOUT_S) as client:
            for version in range(2):
                client.publish(version, trained.states[version], snapshot_dir, model_config=trained.config)
        tokens = random_tokens(30, seed=51)
        for address in addresses:  # every replica sees every version through the shared registry
            with LogitClient(address, timeout_s=CALL_TIMEOUT_S) as client:
                seq = client.score([SequenceInput(tokens, spans=((0, 1, 15), (1, 15, 30)))]).sequences[0]
            np.testing.assert_allclose(seq.logprobs[1:15], trained.reference(0, tokens)[1:15], atol=1e-5, rtol=0)
            np.testing.assert_allclose(seq.logprobs[15:], trained.reference(1, tokens)[15:], atol=1e-5, rtol=0)

        remaining = replica_set.scale(1)
        assert remaining == addresses[:1]
        _wait(lambda: {r.address for r in registry.replicas()} == set(remaining))  # deregistered on stop
        with LogitClient(remaining[0], timeout_s=CALL_TIMEOUT_S) as client:
            assert client.health()
    finally:
        replica_set.shutdown()
        registry.close()
    assert replica_set.addresses() == []

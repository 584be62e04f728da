"""Several replicas on one Redis registry and one snapshot directory: one view of versions, one EWMA."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from logit_client import LogitClient, SequenceInput
from logit_service.registry.redis import RedisRegistry
from tests.helpers import NUM_VERSIONS, random_tokens
from tests.integration.test_ewma_route import AGE, ewma_reference


def _wait(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.05)


def _io_done(server) -> None:
    """Returns once every job queued on the server's I/O threads so far has finished: jobs that take
    every one of those threads can only start when the jobs before them are done."""
    io = next(e for e in server.running.executors if e._thread_name_prefix == "logit-io")
    every = threading.Barrier(io._max_workers + 1)
    held = [io.submit(every.wait, 60) for _ in range(io._max_workers)]
    every.wait(60)
    for job in held:
        job.result(60)


@pytest.fixture
def replicas(make_server, snapshot_dir, redis_url, request):
    namespace = f"replicas-{request.node.name}"
    make = lambda name: make_server(  # noqa: E731
        snapshot_dir,
        registry=RedisRegistry(redis_url, namespace=namespace),
        retention_window=NUM_VERSIONS,
        ewma_target_age=AGE,
        replica_id=name,
        heartbeat_s=0.2,
        scan_interval_s=0.1,
    )
    return make("replica-a"), make("replica-b"), RedisRegistry(redis_url, namespace=namespace)


def test_versions_published_through_either_replica_are_served_by_both(replicas, snapshot_dir, trained):
    a, b, _ = replicas
    tokens = random_tokens(30, seed=1)
    clients = [LogitClient(a.address), LogitClient(b.address)]
    for version in range(NUM_VERSIONS):  # alternate: each replica registers only half of the versions
        clients[version % 2].publish(version, trained.states[version], snapshot_dir, model_config=trained.config)
    answers = [c.score([SequenceInput(tokens, spans=((v, 1, 30),))]).sequences[0].logprobs for c in clients for v in (0, 3)]
    assert np.array_equal(answers[0], answers[2], equal_nan=True) and np.array_equal(answers[1], answers[3], equal_nan=True)
    np.testing.assert_allclose(answers[1][1:], trained.reference(3, tokens)[1:], atol=1e-5)
    for c in clients:
        c.close()


def test_both_replicas_converge_on_one_ewma_over_every_version(replicas, snapshot_dir, trained):
    a, b, registry = replicas
    clients = [LogitClient(a.address), LogitClient(b.address)]
    for version in range(NUM_VERSIONS):
        clients[version % 2].publish(version, trained.states[version], snapshot_dir, model_config=trained.config)
    newest = NUM_VERSIONS - 1
    _wait(lambda: all(c.list_versions().ewma is not None and c.list_versions().ewma.policy_version == newest for c in clients))
    for server in (a, b):
        _wait(lambda s=server: s.running.ewma.track.folded_versions[-1:] == [newest])
    assert a.running.ewma.track.folded_versions == b.running.ewma.track.folded_versions == list(range(NUM_VERSIONS))
    assert registry.get_ewma().covers_versions == tuple(range(NUM_VERSIONS))
    tokens = random_tokens(25, seed=2)
    answers = [c.score([SequenceInput(tokens, spans=((newest, 1, 25),))], force_ewma=True).sequences[0].logprobs for c in clients]
    assert np.array_equal(answers[0], answers[1], equal_nan=True)
    np.testing.assert_allclose(answers[0][1:], ewma_reference(trained.states, list(range(NUM_VERSIONS)), tokens)[1:], atol=1e-5)
    for c in clients:
        c.close()


def test_replicas_hold_leases_with_dialable_addresses(replicas):
    a, b, registry = replicas
    _wait(lambda: {r.replica_id for r in registry.replicas()} == {"replica-a", "replica-b"})
    addresses = {r.replica_id: r.address for r in registry.replicas()}
    assert addresses == {"replica-a": a.address, "replica-b": b.address}
    a.stop()
    _wait(lambda: {r.replica_id for r in registry.replicas()} == {"replica-b"})


def test_router_sends_each_version_where_it_is_resident(replicas, snapshot_dir, trained):
    from logit_client import ReplicaRouter

    a, b, registry = replicas
    with LogitClient(a.address) as client:
        for version in range(3):
            client.publish(version, trained.states[version], snapshot_dir, model_config=trained.config)
    for server in (a, b):  # EWMA folds load every version; let them finish, then empty the caches
        _wait(lambda s=server: s.running.ewma.track.folded_versions[-1:] == [2])
        _io_done(server)  # each publication queued a catch-up, and one that runs late loads versions again
        for key in server.running.store.cache.keys():
            server.running.store.cache.drop(key)
    tokens = random_tokens(12, seed=3)
    LogitClient(a.address).score([SequenceInput(tokens, spans=((1, 1, 12),))])  # v1 now resident on a only
    LogitClient(b.address).score([SequenceInput(tokens, spans=((2, 1, 12),))])  # v2 on b only
    router = ReplicaRouter(registry, refresh_s=0.0)

    def resident(address) -> set[int]:
        return {v for r in registry.replicas() if r.address == address for v in r.resident_versions}

    # Exactly these: a heartbeat built before the caches were emptied may still land after it.
    _wait(lambda: resident(a.address) == {1} and resident(b.address) == {2})
    assert router({1})[0] == a.address and router({2})[0] == b.address
    assert set(router.addresses()) == {a.address, b.address}

    b.running.store.cache.drop("1")
    with LogitClient(router.addresses(), router=router) as client:
        for _ in range(4):  # round-robin alone would reach b at least once
            client.score([SequenceInput(tokens, spans=((1, 1, 12),))])
    assert "1" not in b.running.store.cache.keys()

"""RedisRegistry against a real redis-server: the shared registry behaviour, plus what only Redis has
(sharing between instances, pub/sub events, connection failures)."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import redis

from logit_service.errors import RegistryError, VersionConflict
from logit_service.registry.factory import make_registry
from logit_service.registry.redis import RedisRegistry, redact_url
from logit_service.types import ReplicaRecord
from tests.redis_server import free_port, running_redis_server
from tests.registry_checks import BEHAVIOUR_CHECKS, assert_same_record, check_id, make_record


@pytest.mark.parametrize("check", BEHAVIOUR_CHECKS, ids=check_id)
def test_redis_registry(check, redis_registry: RedisRegistry) -> None:
    check(redis_registry)


def test_second_instance_sees_the_first_ones_data(redis_url: str) -> None:
    """What a restarted server relies on: the state is in Redis, not in the process."""
    namespace = f"test-{uuid.uuid4().hex}"
    first = RedisRegistry(redis_url, namespace=namespace)
    record, ewma = make_record(3, covers_versions=(1, 2)), make_record(3, digest="sha256:ewma")
    replica = ReplicaRecord("replica-a", "10.0.0.1:50051", resident_versions=(3,), started_at=17.25)
    first.publish(record)
    first.put_ewma(ewma)
    first.heartbeat(replica, ttl_s=60)
    first.close()

    second = RedisRegistry(redis_url, namespace=namespace)
    assert_same_record(second.get(3), record)
    assert second.list() == [record]
    assert second.latest() == 3
    assert_same_record(second.get_ewma(), ewma)
    assert second.replicas() == [replica]
    second.close()

    other = RedisRegistry(redis_url, namespace=f"test-{uuid.uuid4().hex}")
    assert other.list(include_evicted=True) == [] and other.replicas() == []
    other.close()


def _next_message(pubsub, deadline_s: float = 5.0) -> dict:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message is not None:
            return message
    raise AssertionError(f"no pub/sub message within {deadline_s} s")


def test_publish_announces_new_versions_only(redis_url: str, redis_registry: RedisRegistry) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    pubsub = client.pubsub()
    pubsub.subscribe(redis_registry.events_channel)
    assert _next_message(pubsub)["type"] == "subscribe"

    redis_registry.publish(make_record(5))
    redis_registry.publish(make_record(5))  # duplicate: no event
    with pytest.raises(VersionConflict):
        redis_registry.publish(make_record(5, digest="sha256:other"))  # conflict: no event
    redis_registry.publish(make_record(3))

    # The message after 5's is 3's: neither the duplicate nor the conflict announced anything.
    events = [json.loads(_next_message(pubsub)["data"]) for _ in range(2)]
    assert events == [{"event": "published", "policy_version": 5}, {"event": "published", "policy_version": 3}]
    pubsub.close()
    client.close()


def test_expired_replica_ids_are_removed_from_the_id_set(redis_url: str) -> None:
    namespace = f"test-{uuid.uuid4().hex}"
    registry = RedisRegistry(redis_url, namespace=namespace)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    registry.heartbeat(ReplicaRecord("replica-a", "10.0.0.1:50051"), ttl_s=0.05)
    assert client.smembers(f"{namespace}:replicas") == {"replica-a"}
    client.delete(f"{namespace}:replica:replica-a")  # the lease lapsing, without waiting for it
    assert registry.replicas() == []
    assert client.smembers(f"{namespace}:replicas") == set()
    client.close()
    registry.close()


def test_unreachable_redis_raises_registry_error_without_the_password() -> None:
    port = free_port()  # nothing listens there once the probe socket is closed
    with pytest.raises(RegistryError) as info:
        RedisRegistry(f"redis://:s3cret@127.0.0.1:{port}/0")
    assert f"127.0.0.1:{port}" in info.value.message
    assert "s3cret" not in info.value.message
    assert info.value.retryable


def test_registry_error_when_redis_goes_away() -> None:
    with running_redis_server() as server:
        registry = RedisRegistry(server.url)
        registry.publish(make_record(1))
        server.stop()
        with pytest.raises(RegistryError, match=f"127.0.0.1:{server.port}"):
            registry.latest()
        registry.close()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param("redis://:pw@h:6379/0", "redis://***@h:6379/0", id="password only"),
        pytest.param("redis://user:pw@h:6379/0", "redis://***@h:6379/0", id="user and password"),
        pytest.param("redis://h:6379/0?password=pw&ssl=1", "redis://h:6379/0?password=***&ssl=1", id="query"),
        pytest.param("redis://h:6379/0", "redis://h:6379/0", id="no credentials"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_make_registry_with_url_is_redis_in_the_namespace_asked_for(redis_url: str) -> None:
    namespace = f"test-{uuid.uuid4().hex}"
    registry = make_registry(redis_url, namespace=namespace)
    assert isinstance(registry, RedisRegistry)
    assert registry.publish(make_record(1)) is True
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert client.exists(f"{namespace}:version:1") == 1
    finally:
        client.close()
        registry.close()


def test_make_registry_without_a_namespace_uses_logit() -> None:
    # a server of its own: the default namespace is shared by every registry that does not name one
    with running_redis_server() as server:
        registry = make_registry(server.url)
        client = redis.Redis.from_url(server.url, decode_responses=True)
        try:
            registry.publish(make_record(3))
            assert client.keys("*:version:*") == ["logit:version:3"]
        finally:
            client.close()
            registry.close()


def test_readiness_follows_the_registry_and_liveness_stays(tmp_path):
    """A replica whose Redis is gone reports NOT_SERVING for the service (readiness), SERVING for ""."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from logit_service.config import ServerConfig
    from logit_service.server.app import SERVICE_NAME, ServerThread
    from tests.redis_server import running_redis_server

    def status(stub, name):
        return stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status

    with running_redis_server() as redis_process:
        config = ServerConfig(snapshot_dir=tmp_path, port=0, redis_url=redis_process.url, heartbeat_s=0.05)
        server = ServerThread(config).start()
        try:
            with grpc.insecure_channel(server.address) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                assert status(stub, SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING
                redis_process.stop()
                deadline = time.monotonic() + 15
                while status(stub, SERVICE_NAME) != health_pb2.HealthCheckResponse.NOT_SERVING:
                    assert time.monotonic() < deadline, "readiness still SERVING 15 s after Redis went away"
                    time.sleep(0.05)
                assert status(stub, "") == health_pb2.HealthCheckResponse.SERVING
        finally:
            server.stop()


def test_a_blank_password_parameter_is_kept_and_masked() -> None:
    assert redact_url("redis://h:6379/0?password=&ssl=1") == "redis://h:6379/0?password=***&ssl=1"


def test_a_malformed_version_record_is_a_registry_error_naming_its_key(redis_url: str) -> None:
    namespace = f"test-{uuid.uuid4().hex}"
    registry = RedisRegistry(redis_url, namespace=namespace)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.hset(f"{namespace}:version:7", mapping={"policy_version": "7", "snapshot_path": "/s"})  # no digest
    with pytest.raises(RegistryError) as info:
        registry.get(7)
    assert info.value.message == f"malformed version record at Redis key '{namespace}:version:7': KeyError('digest')"
    client.close()
    registry.close()


def test_a_malformed_replica_record_is_a_registry_error_naming_its_key(redis_url: str) -> None:
    namespace = f"test-{uuid.uuid4().hex}"
    registry = RedisRegistry(redis_url, namespace=namespace)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.sadd(f"{namespace}:replicas", "r1")
    client.set(f"{namespace}:replica:r1", json.dumps({"replica_id": "r1"}))  # no address
    with pytest.raises(RegistryError) as info:
        registry.replicas()
    assert info.value.message == f"malformed replica record at Redis key '{namespace}:replica:r1': KeyError('address')"
    client.close()
    registry.close()


def test_an_empty_namespace_or_a_client_that_returns_bytes_is_refused(redis_url: str) -> None:
    with pytest.raises(ValueError) as empty:
        RedisRegistry(redis_url, namespace="")
    assert str(empty.value) == "registry namespace must be non-empty"
    raw_client = redis.Redis.from_url(redis_url)  # decode_responses left False: values come back as bytes
    with pytest.raises(ValueError) as raw:
        RedisRegistry(redis_url, namespace="n", client=raw_client)
    assert str(raw.value) == "RedisRegistry needs a client created with decode_responses=True"
    raw_client.close()


def test_an_unreachable_redis_is_named_as_such_while_connecting() -> None:
    port = free_port()
    with pytest.raises(RegistryError) as info:
        RedisRegistry(f"redis://127.0.0.1:{port}/0")
    assert info.value.message.startswith(f"Redis registry at redis://127.0.0.1:{port}/0 is unreachable while connecting: ")


def test_a_lease_reports_the_seconds_it_has_left(redis_registry: RedisRegistry) -> None:
    # A long lease, so the seconds it has left are its ttl less the few the calls take; the registry
    # stores milliseconds, and what it reports must be seconds.
    redis_registry.lease(3, "rollout-1", ttl_s=100_000)
    left = redis_registry.leased_versions()[3]
    assert 100_000 - 60 < left <= 100_000

"""Fixtures giving integration tests a real redis-server and an isolated RedisRegistry on it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from logit_service.registry.redis import RedisRegistry
from tests.redis_server import running_redis_server


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with running_redis_server() as server:
        yield server.url


@pytest.fixture
def redis_registry(redis_url: str) -> Iterator[RedisRegistry]:
    # A fresh namespace per test: tests share one server but never see each other's keys.
    registry = RedisRegistry(redis_url, namespace=f"test-{uuid.uuid4().hex}")
    yield registry
    registry.close()

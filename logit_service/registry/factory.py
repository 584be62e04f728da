"""Chooses the registry for a deployment: in-process for a single node, Redis when a URL is given.

redis-py is imported only on the Redis path, so a single-node server does not need it installed.
"""

from __future__ import annotations

from logit_service.registry.base import Registry
from logit_service.registry.memory import InMemoryRegistry


def make_registry(redis_url: str | None, namespace: str = "logit") -> Registry:
    """An `InMemoryRegistry` when `redis_url` is None, else a connected `RedisRegistry`.

    Raises `RegistryError` when the Redis server cannot be reached.
    """
    if redis_url is None:
        return InMemoryRegistry()
    from logit_service.registry.redis import RedisRegistry

    return RedisRegistry(redis_url, namespace=namespace)

"""Builds a server from a ServerConfig and runs it: gRPC, health, reflection, background upkeep.

`start_server` is the asyncio entry point; `ServerThread` runs one on its own loop in a thread, for
tests, the demo and benchmarks that need a real server beside other code.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from logit_service.backends.torch_backend import TorchBackend
from logit_service.config import ServerConfig
from logit_service.errors import LogitServiceError
from logit_service.registry.base import Registry
from logit_service.registry.factory import make_registry
from logit_service.server.engine import ScoringEngine
from logit_service.server.ewma_follower import EwmaFollower
from logit_service.server.follower import SegmentFollower
from logit_service.server.interceptors import BearerTokenInterceptor, ErrorInterceptor
from logit_service.server.segment_results import SegmentResults
from logit_service.server.servicer import LogitServicer
from logit_service.snapshots.store import SnapshotStore
from logit_service.types import ReplicaRecord
from logit_service.v1 import logit_service_pb2 as pb
from logit_service.v1 import logit_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["LogitService"].full_name


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    address: str
    config: ServerConfig
    registry: Registry
    store: SnapshotStore
    engine: ScoringEngine
    health: health.aio.HealthServicer
    executors: list[ThreadPoolExecutor]
    ewma: EwmaFollower | None = None
    started_at: float = field(default_factory=time.time)
    tasks: list[asyncio.Task] = field(default_factory=list)

    @property
    def advertised(self) -> str:
        if self.config.advertise_address:
            return self.config.advertise_address
        host = self.config.host
        if host in ("0.0.0.0", "::", "[::]", ""):  # a wildcard bind is not an address anyone can dial
            host = socket.gethostname()
        return f"{host}:{self.port}"

    @property
    def replica_id(self) -> str:
        return self.config.replica_id or self.advertised

    async def stop(self, grace_s: float | None = None) -> None:
        await self.health.enter_graceful_shutdown()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        replica_id = self.replica_id
        try:
            self.registry.deregister(replica_id)
        except Exception:  # a dead registry must not block shutdown
            log.warning("could not deregister %s", replica_id, exc_info=True)
        await self.server.stop(self.config.grace_s if grace_s is None else grace_s)
        for executor in self.executors:
            executor.shutdown(wait=True, cancel_futures=True)
        self.registry.close()


async def _scan_loop(running: RunningServer, io: ThreadPoolExecutor) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(running.config.scan_interval_s)
        try:
            for version in await loop.run_in_executor(io, running.store.scan):
                log.info("found version %d in %s", version, running.store.root)
            await loop.run_in_executor(io, running.store.apply_retention)  # leases that lapsed
            if running.ewma is not None:
                running.ewma.catch_up()  # versions other replicas registered in a shared registry
        except Exception:
            log.exception("snapshot directory scan failed")


async def _heartbeat_loop(running: RunningServer, io: ThreadPoolExecutor) -> None:
    loop = asyncio.get_running_loop()
    config = running.config
    while True:
        resident = [int(k) for k in running.store.cache.keys() if k.isdigit()]
        replica = ReplicaRecord(
            replica_id=running.replica_id,
            address=running.advertised,
            resident_versions=tuple(sorted(resident)),
            backend=running.engine.backend.name,
            started_at=running.started_at,
        )
        try:
            await loop.run_in_executor(io, running.registry.heartbeat, replica, 3 * config.heartbeat_s)
            ready = True
        except Exception:
            log.warning("replica heartbeat failed", exc_info=True)
            ready = False
        # Readiness follows the registry: a replica that cannot see version metadata should get no
        # traffic (orchestrators probe the service name); liveness ("") stays SERVING, no restart needed.
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        await running.health.set(SERVICE_NAME, status)
        await asyncio.sleep(config.heartbeat_s)


async def start_server(config: ServerConfig, registry: Registry | None = None) -> RunningServer:
    registry = registry or make_registry(config.redis_url, namespace=config.redis_namespace)
    store = SnapshotStore(
        config.snapshot_dir,
        registry,
        retention_window=config.retention_window,
        cache_bytes=config.cache_bytes,
        delete_evicted=config.delete_evicted,
        max_leased_versions=config.max_leased_versions,
    )
    store.apply_retention()
    backend = TorchBackend(
        dtype=config.dtype,
        device=config.device,
        attn_implementation=config.attn_implementation,
        max_batch_tokens=config.max_batch_tokens,
        logprob_chunk_tokens=config.logprob_chunk_tokens,
        batch_invariant=config.batch_invariant,
    )
    kept = SegmentResults(config.segment_cache_tokens)
    engine = ScoringEngine(
        store,
        backend,
        max_sequences=config.max_sequences_per_request,
        max_tokens=config.max_tokens_per_request,
        kept=kept,
    )
    # The first version published builds the model and proves it; a model that cannot be served
    # exactly refuses the publish instead of failing every Score later.
    store.before_register = engine.prepare_model
    store.scan()  # a restarted server serves what the directory and registry already hold
    if store.retained():
        try:
            engine.prepare_model(store.retained()[-1])  # versions registered before this start
        except LogitServiceError as e:
            log.error("the model of the retained versions cannot be served: %s", e.message)
    compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="logit-compute")
    follower = SegmentFollower(
        engine, kept, compute, max_pending_tokens=config.max_pending_tokens, batch_tokens=config.max_batch_tokens
    )
    io = ThreadPoolExecutor(max_workers=2, thread_name_prefix="logit-io")
    ewma = EwmaFollower(store, beta=config.resolved_ewma_beta, executor=io) if config.ewma_enabled else None
    if ewma is not None:
        store.on_published = ewma.on_published
        ewma.catch_up()
    options = [
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not steal traffic
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]
    interceptors: list[grpc.aio.ServerInterceptor] = [ErrorInterceptor()]
    if config.auth_token:
        interceptors.insert(0, BearerTokenInterceptor(config.auth_token))  # refuse before any work
    server = grpc.aio.server(
        interceptors=interceptors, options=options, maximum_concurrent_rpcs=config.max_concurrent_rpcs
    )
    servicer = LogitServicer(
        store, engine, compute=compute, io=io, follower=follower, max_lease_ttl_s=config.max_lease_ttl_s
    )
    pb_grpc.add_LogitServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(f"{config.host}:{config.port}")
    if port == 0:
        raise OSError(f"could not bind {config.host}:{config.port}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    running = RunningServer(
        server=server,
        port=port,
        address=f"{config.host}:{port}",
        config=config,
        registry=registry,
        store=store,
        engine=engine,
        health=health_servicer,
        executors=[compute, io],
        ewma=ewma,
    )
    running.tasks = [
        asyncio.create_task(_scan_loop(running, io)),
        asyncio.create_task(_heartbeat_loop(running, io)),
        asyncio.create_task(follower.run()),
    ]
    log.info("serving on %s (snapshots in %s, window K=%d)", running.address, config.snapshot_dir, config.retention_window)
    return running


class ServerThread:
    """A real server on its own event loop in a background thread."""

    def __init__(self, config: ServerConfig, registry: Registry | None = None) -> None:
        self.config = config
        self._registry = registry
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="logit-server", daemon=True)
        self.running: RunningServer | None = None

    def start(self) -> "ServerThread":
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(start_server(self.config, self._registry), self._loop)
        self.running = future.result(timeout=120)
        return self

    @property
    def address(self) -> str:
        assert self.running is not None
        return self.running.address

    def stop(self, grace_s: float = 0.5) -> None:
        if self.running is not None:
            asyncio.run_coroutine_threadsafe(self.running.stop(grace_s), self._loop).result(timeout=60)
            self.running = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

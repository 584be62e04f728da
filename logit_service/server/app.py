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

from logit_service.backends.factory import make_backend
from logit_service.config import ServerConfig
from logit_service.errors import LogitServiceError, RegistryError
from logit_service.registry.base import Registry
from logit_service.registry.factory import make_registry
from logit_service.server.engine import ScoringEngine
from logit_service.server.ewma_follower import EwmaFollower
from logit_service.server.follower import SegmentFollower
from logit_service.server.malloc_tuning import keep_freed_memory
from logit_service.server.access_log import AccessLogInterceptor
from logit_service.server.auth import TokenAuthInterceptor, read_tokens
from logit_service.server.batcher import ScoreBatcher
from logit_service.server.call_limits import CallLimitInterceptor
from logit_service.server.interceptors import ErrorInterceptor
from logit_service.server.metrics import ReplicaState, ServiceMetrics
from logit_service.server.request_decoding import RequestBytesBudget, RequestDecoder
from logit_service.server.prefetch import Prefetcher
from logit_service.server.segment_results import SegmentResults
from logit_service.server.peer_fetch import PeerFetcher
from logit_service.server.servicer import LogitServicer
from logit_service.server.wire_bounds import RequestBounds
from logit_service.snapshots.store import SnapshotStore
from logit_service.tensor_threads import serial_tensor_ops
from logit_service.types import ReplicaRecord, VersionRecord
from logit_service.v1 import logit_service_pb2 as pb
from logit_service.v1 import logit_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# How often a running server removes crash leftovers (it also does at start).
LEFTOVER_INTERVAL_S = 60.0
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
    batcher: ScoreBatcher | None = None
    follower: SegmentFollower | None = None
    metrics: ServiceMetrics | None = None
    metrics_port: int | None = None  # where /metrics is served, if it is
    metrics_http: object | None = None
    decoder: RequestDecoder | None = None  # request byte limits, the in-flight budget, the decode threads
    servicer: LogitServicer | None = None
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
        if self.store.compactor is not None:
            # A pass in progress finishes its file first: both forms stay valid at every moment anyway.
            await asyncio.get_running_loop().run_in_executor(None, self.store.compactor.stop)
        # Off the event loop: the cancellations of calls cut at the grace period are delivered by
        # callbacks on this loop, and they are what stops the engine between layers. Blocking the loop
        # here would leave a long forward running to its end.
        for executor in self.executors:
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
        if self.engine.prefetcher is not None:
            await asyncio.to_thread(self.engine.prefetcher.close)
        close_backend = getattr(self.engine.backend, "close", None)  # an embedded engine (vllm) to stop
        if close_backend is not None:
            close_backend()
        if self.metrics_http is not None:
            self.metrics_http.shutdown()
            self.metrics_http.server_close()
        self.registry.close()


async def _scan_loop(running: RunningServer, io: ThreadPoolExecutor) -> None:
    loop = asyncio.get_running_loop()
    leftovers_at = time.monotonic() + LEFTOVER_INTERVAL_S
    while True:
        await asyncio.sleep(running.config.scan_interval_s)
        try:
            for version in await loop.run_in_executor(io, running.store.scan):
                log.info("found version %d in %s", version, running.store.root)
            await loop.run_in_executor(io, running.store.apply_retention)  # leases that lapsed
            if running.ewma is not None:
                running.ewma.catch_up()  # versions other replicas registered; a record a wipe lost
            if time.monotonic() >= leftovers_at:  # another replica may have been killed mid-deletion
                leftovers_at = time.monotonic() + LEFTOVER_INTERVAL_S
                await loop.run_in_executor(io, running.store.remove_leftovers)
        except RegistryError as e:  # readiness reports it; scoring of known versions goes on
            log.warning("snapshot directory scan skipped: %s", e.message)
        except Exception:
            log.exception("snapshot directory scan failed")


async def _heartbeat_loop(running: RunningServer, beats: ThreadPoolExecutor) -> None:
    """The replica's registry lease, renewed every heartbeat_s on a thread of its own: on the I/O
    threads it would wait behind a publish's verification or an EWMA fold, and a replica whose
    threads are busy for longer than its lease (3 heartbeats) would drop out of the registry while
    it serves."""
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
            await loop.run_in_executor(beats, running.registry.heartbeat, replica, 3 * config.heartbeat_s)
            ready = True
        except Exception:
            log.warning("replica heartbeat failed", exc_info=True)
            ready = False
        # Readiness follows the registry: a replica that cannot see version metadata should get no
        # traffic (orchestrators probe the service name); liveness ("") stays SERVING, no restart needed.
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        await running.health.set(SERVICE_NAME, status)
        await asyncio.sleep(config.heartbeat_s)


@dataclass
class ComputeThreadPreparer:
    """`engine.prepare_model` (the store's `before_register`) with the model's build and probe on the
    compute thread, where every Score's forward runs.

    Two reasons. The probe proves the forwards that Scores will run, so it runs them with the same
    OpenMP team. And a thread that runs a parallel tensor op keeps an OpenMP team of its own for as
    long as it lives, which slows every forward of the process once it holds more OpenMP threads than
    cores (tensor_threads.py): a probe on the publishing thread left such a second team behind. Once
    the model is built the call only checks the version's config hash, so it stays on the caller's
    thread, and a publish never waits for a forward in flight. A Score can register a version itself
    (a directory scan when it asks for one not yet seen), on the compute thread: that call builds there
    and then, since waiting for the compute thread from it would wait forever."""

    engine: ScoringEngine
    compute: ThreadPoolExecutor  # one worker, which lives as long as the executor
    compute_thread: int = field(init=False)

    def __post_init__(self) -> None:
        self.compute_thread = self.compute.submit(threading.get_ident).result()

    def __call__(self, record: VersionRecord) -> None:
        if self.engine.backend.model is None and threading.get_ident() != self.compute_thread:
            self.compute.submit(self.engine.prepare_model, record).result()
        self.engine.prepare_model(record)


async def start_server(config: ServerConfig, registry: Registry | None = None) -> RunningServer:
    if config.keep_freed_memory:
        keep_freed_memory()  # before the model's first allocations
    # Forwards run on the compute thread only, and its OpenMP team is the process's one
    # (tensor_threads.py): this thread (the event loop's) and every other one run tensor ops alone.
    serial_tensor_ops()
    registry = registry or make_registry(config.redis_url, namespace=config.redis_namespace)
    store = SnapshotStore(
        config.snapshot_dir,
        registry,
        retention_window=config.retention_window,
        cache_bytes=config.cache_bytes,
        delete_evicted=config.delete_evicted,
        max_leased_versions=config.max_leased_versions,
        max_lease_holders=config.max_lease_holders,
        compact_keyframe_interval=config.compact_keyframe_interval if config.compact_snapshots else None,
    )
    if config.fetch_peers:
        store.fetch_missing = _peer_fetcher(config, store).fetch
    backend = make_backend(config)
    kept = SegmentResults(config.segment_cache_tokens, max_bytes=config.segment_cache_bytes)
    prefetcher = Prefetcher(store, resident_key=lambda: backend.resident_key)
    engine = ScoringEngine(
        store,
        backend,
        max_sequences=config.max_sequences_per_request,
        max_tokens=config.max_tokens_per_request,
        kept=kept,
        prefetcher=prefetcher,
    )
    compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="logit-compute")
    prepare_model = ComputeThreadPreparer(engine, compute)
    # The first version published builds the model and proves it; a model that cannot be served
    # exactly refuses the publish instead of failing every Score later.
    store.before_register = prepare_model
    store.recover()  # a restarted server serves what the directory and registry already hold
    if store.compactor is not None:
        store.compactor.start().request()  # versions retained from before this start
    if store.retained():
        try:
            prepare_model(store.retained()[-1])  # versions registered before this start
        except LogitServiceError as e:
            log.error("the model of the retained versions cannot be served: %s", e.message)
    follower = SegmentFollower(
        engine,
        kept,
        compute,
        max_pending_tokens=config.max_pending_tokens,
        max_pending_bytes=config.max_pending_bytes,
        batch_tokens=config.max_batch_tokens,
    )
    io = ThreadPoolExecutor(max_workers=2, thread_name_prefix="logit-io", initializer=serial_tensor_ops)
    beats = ThreadPoolExecutor(max_workers=1, thread_name_prefix="logit-heartbeat", initializer=serial_tensor_ops)
    ewma = EwmaFollower(store, beta=config.resolved_ewma_beta, executor=io) if config.ewma_enabled else None
    if ewma is not None:
        store.on_published = ewma.on_published
        ewma.catch_up()
    options = [
        ("grpc.max_send_message_length", config.max_message_bytes),
        # No request may be larger than the largest any method accepts, probes included: gRPC itself
        # refuses the rest before a handler sees them.
        ("grpc.max_receive_message_length", min(config.max_request_bytes, config.max_message_bytes)),
        ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not steal traffic
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]
    metrics = ServiceMetrics()
    # Decoding, counting and converting big requests happens here, never on the event loop; two
    # threads, so one huge request cannot hold up every other caller's decode.
    decode = ThreadPoolExecutor(max_workers=2, thread_name_prefix="logit-decode", initializer=serial_tensor_ops)
    decoder = RequestDecoder(
        RequestBounds(
            max_request_bytes=min(config.max_request_bytes, config.max_message_bytes),
            max_sequences=config.max_sequences_per_request,
            max_tokens=config.max_tokens_per_request,
        ),
        RequestBytesBudget(config.max_inflight_request_bytes),
        decode,
    )
    interceptors: list[grpc.aio.ServerInterceptor] = [ErrorInterceptor(decoder)]
    auth = _token_auth(config)
    if auth is not None:
        interceptors.insert(0, auth)  # refuse before any work
    # Limits before authentication: an over-limit call costs nothing. The access log is outermost, so
    # refusals of both kinds are logged and counted too.
    interceptors.insert(0, CallLimitInterceptor(max_api_calls=config.max_concurrent_rpcs, max_probe_calls=config.max_probe_rpcs))
    interceptors.insert(0, AccessLogInterceptor(metrics, log_format=config.access_log))
    server = grpc.aio.server(interceptors=interceptors, options=options)
    batcher = ScoreBatcher(
        engine, compute, max_tokens=config.max_tokens_per_request, coalesce_window_s=config.coalesce_window_s,
        burst_gap_s=config.burst_gap_s,
    )
    servicer = LogitServicer(
        store, engine, compute=compute, io=io, decode=decode, follower=follower, batcher=batcher,
        max_lease_ttl_s=config.max_lease_ttl_s, max_upload_bytes=config.max_upload_bytes,
    )
    pb_grpc.add_LogitServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = _add_port(server, config)
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
        executors=[compute, io, decode, beats],
        ewma=ewma,
        metrics=metrics,
        decoder=decoder,
    )
    running.batcher, running.follower, running.servicer = batcher, follower, servicer
    metrics.bind_state(lambda: _replica_state(running, follower, compute))
    if config.metrics_port is not None:
        running.metrics_http, running.metrics_port = _serve_metrics(metrics, config.host, config.metrics_port)
    running.tasks = [
        asyncio.create_task(_scan_loop(running, io)),
        asyncio.create_task(_heartbeat_loop(running, beats)),
        asyncio.create_task(follower.run()),
    ]
    log.info("serving on %s (snapshots in %s, window K=%d)", running.address, config.snapshot_dir, config.retention_window)
    return running


def _peer_fetcher(config: ServerConfig, store: SnapshotStore) -> PeerFetcher:
    credentials = None
    if config.fetch_tls_ca_file is not None:
        own = config.tls_cert_file is not None and config.tls_key_file is not None
        credentials = grpc.ssl_channel_credentials(
            root_certificates=config.fetch_tls_ca_file.read_bytes(),
            private_key=config.tls_key_file.read_bytes() if own else None,
            certificate_chain=config.tls_cert_file.read_bytes() if own else None,
        )
    return PeerFetcher(
        store, config.fetch_peers, max_bytes=config.max_upload_bytes, timeout_s=config.fetch_timeout_s,
        credentials=credentials, auth_token=config.auth_token or config.reader_token,
    )


def _token_auth(config: ServerConfig) -> TokenAuthInterceptor | None:
    publishers = [config.auth_token] if config.auth_token else []
    readers = [config.reader_token] if config.reader_token else []
    if config.auth_token_file is not None:
        publishers += read_tokens(config.auth_token_file)
    if config.reader_token_file is not None:
        readers += read_tokens(config.reader_token_file)
    if not publishers and not readers:
        return None
    return TokenAuthInterceptor(publisher_tokens=publishers, reader_tokens=readers)


def _add_port(server: grpc.aio.Server, config: ServerConfig) -> int:
    address = f"{config.host}:{config.port}"
    if config.tls_cert_file is None:
        return server.add_insecure_port(address)
    client_ca = config.tls_client_ca_file.read_bytes() if config.tls_client_ca_file is not None else None
    credentials = grpc.ssl_server_credentials(
        [(config.tls_key_file.read_bytes(), config.tls_cert_file.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )
    return server.add_secure_port(address, credentials)


def _serve_metrics(metrics: ServiceMetrics, host: str, port: int):
    from prometheus_client import start_http_server

    http, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    bound = http.server_address[1]
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return http, bound


def _replica_state(running: RunningServer, follower: SegmentFollower, compute: ThreadPoolExecutor) -> ReplicaState:
    store, backend = running.store, running.engine.backend
    try:
        retained, leased = len(store.retained()), len(store.leased())
    except Exception:  # the registry is down: report what this replica knows by itself
        retained = leased = None
    return ReplicaState(
        cache_bytes=store.cache.used_bytes,
        cache_budget_bytes=store.cache.budget_bytes,
        cache_hits=store.cache.hits,
        cache_misses=store.cache.misses,
        loads=store.loads,
        load_seconds=store.load_seconds,
        load_bytes=store.load_bytes,
        swaps=backend.swaps,
        swap_seconds=backend.swap_seconds,
        resident_versions=len(store.cache.keys()),
        retained_versions=retained,
        leased_versions=leased,
        pending_segment_tokens=follower.pending_tokens,
        kept_segments=len(follower.kept),
        queue_depth=compute._work_queue.qsize(),  # noqa: SLF001 - the executor exposes no public depth
        score_batches=running.batcher.batches if running.batcher is not None else 0,
        batched_score_calls=running.batcher.calls if running.batcher is not None else 0,
        prefetches_started=running.engine.prefetcher.started if running.engine.prefetcher is not None else 0,
        prefetches_used=running.engine.prefetcher.used if running.engine.prefetcher is not None else 0,
        tile_rows_forwarded=getattr(backend, "tile_rows_forwarded", 0),  # the vLLM backend has no tiles
        tile_rows_used=getattr(backend, "tile_rows_used", 0),
    )


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

    def stop(self, grace_s: float | None = None) -> None:
        """Stops the server: calls in flight get `grace_s` to finish (by default the config's grace_s,
        as the command-line server gives them), then are cancelled."""
        if self.running is not None:
            asyncio.run_coroutine_threadsafe(self.running.stop(grace_s), self._loop).result(timeout=60)
            self.running = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

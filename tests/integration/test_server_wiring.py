"""Every setting of a server reaches the part it configures: a real server started with each setting
away from its default, its running parts read back, and what it registers and serves seen from outside.

A setting dropped on the way to its part would leave that part at its default with no error; the
behaviour of each part under its setting is tested where the part is (limits, leases, batching, ...).
"""

from __future__ import annotations

import asyncio
import logging
import threading

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from logit_client import LogitClient, SequenceInput
from logit_service.config import ServerConfig
from logit_service.registry.memory import InMemoryRegistry
from logit_service.server.app import SERVICE_NAME, ServerThread
from logit_service.server.wire_bounds import RequestBounds
from logit_service.snapshots.manifest import read_manifest
from logit_service.snapshots.writer import write_snapshot
from tests.helpers import documented_metrics, scrape_metrics, wait_for

MiB = 1 << 20
SETTINGS = {
    "retention_window": 3,
    "cache_bytes": 12 * MiB,
    "delete_evicted": False,
    "max_leased_versions": 5,
    "max_lease_holders": 7,
    "compact_snapshots": True,
    "compact_keyframe_interval": 3,
    "max_sequences_per_request": 17,
    "max_tokens_per_request": 5000,
    "max_message_bytes": 6 * MiB,
    "max_request_bytes": 3 * MiB,
    "max_inflight_request_bytes": 9 * MiB,
    "max_batch_tokens": 4096,
    "coalesce_window_s": 0.02,
    "burst_gap_s": 0.003,
    "segment_cache_tokens": 999,
    "segment_cache_bytes": 2 * MiB,
    "max_pending_tokens": 777,
    "max_pending_bytes": 3 * MiB,
    "ewma_beta": 0.6,
    "max_upload_bytes": 1 << 30,
    "max_lease_ttl_s": 120.0,
    "fetch_timeout_s": 42.0,
    "reader_token": "reader-token-0123456789abcdefgh",
    "replica_id": "replica-under-test",
    "advertise_address": "scorer.example:7070",
    "heartbeat_s": 0.1,
    "metrics_port": 0,
}
WAIT_S = 30


class _CountingRegistry(InMemoryRegistry):
    """The in-process registry, keeping each heartbeat's replica and lease, and each replica deregistered."""

    def __init__(self) -> None:
        super().__init__()
        self.heartbeats: list[tuple] = []
        self.deregistered: list[str] = []

    def deregister(self, replica_id: str) -> None:
        self.deregistered.append(replica_id)
        super().deregister(replica_id)

    def heartbeat(self, replica, ttl_s: float) -> None:
        self.heartbeats.append((replica, ttl_s))
        super().heartbeat(replica, ttl_s)


def test_every_setting_reaches_the_part_it_configures(make_server, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="logit_service.server.app")
    default = ServerConfig(snapshot_dir=tmp_path)
    for name, value in SETTINGS.items():
        assert getattr(default, name) != value, name  # each check below could not fail otherwise
    registry = _CountingRegistry()
    (tmp_path / "snapshots").mkdir()
    server = make_server(tmp_path / "snapshots", registry=registry, fetch_from="127.0.0.1:1, 127.0.0.1:2", **SETTINGS)
    running = server.running
    store, engine = running.store, running.engine

    assert (store.root, store.registry) == (tmp_path / "snapshots", registry)
    assert store.retention_window == 3 and store.delete_evicted is False
    assert (store.max_leased_versions, store.max_lease_holders) == (5, 7)
    assert store.cache.budget_bytes == 12 * MiB
    assert store.compactor is not None and store.compactor.keyframe_interval == 3

    assert (engine.store, engine.max_sequences, engine.max_tokens) == (store, 17, 5000)
    assert engine.backend.max_batch_tokens == 4096
    assert engine.kept is running.follower.kept
    assert (engine.kept.max_tokens, engine.kept.max_bytes) == (999, 2 * MiB)
    assert engine.prefetcher is not None and engine.prefetcher.store is store
    servicer = running.servicer
    assert (servicer.store, servicer.engine, servicer.batcher, servicer.follower) == (store, engine, running.batcher, running.follower)
    assert (servicer.max_lease_ttl_s, servicer.max_upload_bytes) == (120.0, 1 << 30)
    assert f"serving on {running.address} (snapshots in {tmp_path / 'snapshots'}, window K=3)" in caplog.messages
    # the first publish builds and proves the model, on the compute thread
    assert (store.before_register.engine, store.before_register.compute) == (engine, running.executors[0])

    follower = running.follower
    assert (follower.engine, follower.max_pending_tokens, follower.max_pending_bytes, follower.batch_tokens) == (
        engine, 777, 3 * MiB, 4096
    )
    assert (running.batcher.engine, running.batcher.max_tokens, running.batcher.coalesce_window_s) == (engine, 5000, 0.02)
    assert running.batcher.burst_gap_s == 0.003
    assert running.ewma is not None and running.ewma.track.beta == 0.6 and running.ewma.track.store is store
    assert store.on_published == running.ewma.on_published

    # Byte bounds: a request may be no larger than the smaller of the two message limits.
    assert running.decoder.bounds == RequestBounds(max_request_bytes=3 * MiB, max_sequences=17, max_tokens=5000)
    assert running.decoder.budget.limit_bytes == 9 * MiB
    compute, io, decode, beats = running.executors
    assert (compute._max_workers, io._max_workers, decode._max_workers, beats._max_workers) == (1, 2, 2, 1)  # noqa: SLF001

    # Peers to copy missing versions from, with the upload bound, the fetch deadline and the reader token.
    fetcher = store.fetch_missing.__self__
    assert fetcher.peers == ["127.0.0.1:1", "127.0.0.1:2"]
    assert (fetcher.max_bytes, fetcher.timeout_s, fetcher.credentials) == (1 << 30, 42.0, None)
    assert fetcher.metadata == (("authorization", f"Bearer {SETTINGS['reader_token']}"),)

    # What the replica registers about itself, refreshed every heartbeat.
    assert (running.replica_id, running.advertised) == ("replica-under-test", "scorer.example:7070")
    (replica,) = wait_for(registry.replicas, "the first heartbeat")
    assert (replica.replica_id, replica.address, replica.backend) == ("replica-under-test", "scorer.example:7070", "torch")
    assert replica.started_at == running.started_at
    wait_for(lambda: len(registry.heartbeats) >= 3, "more heartbeats")
    assert {ttl for _, ttl in registry.heartbeats} == {3 * SETTINGS["heartbeat_s"]}  # three missed: gone

    assert running.metrics_port and running.metrics_port > 0
    assert f"metrics on http://127.0.0.1:{running.metrics_port}/metrics" in caplog.text
    scraped = scrape_metrics(server)
    assert scraped["logit_service_cache_budget_bytes"] == 12 * MiB
    # Every state metric is there, down to the last one the collector yields: none stopped the scrape.
    state_names = {name for name, kind, _ in documented_metrics() if kind != "histogram"} - {
        "logit_service_calls_total", "logit_service_tokens_scored_total",
    }
    assert state_names <= set(scraped)
    assert scraped["logit_service_kept_segments"] == 0 and scraped["logit_service_tile_rows_used_total"] == 0

    # gRPC itself refuses any message over the request bound, probes included (gRPC's own default is 4 MiB).
    channel = grpc.insecure_channel(running.address)
    try:
        with pytest.raises(grpc.RpcError) as refused:
            health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="x" * (3 * MiB + 1024)), timeout=WAIT_S
            )
    finally:
        channel.close()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    # The port is this server's alone: a second server asking for it fails instead of sharing its traffic.
    second = ServerThread(ServerConfig(snapshot_dir=tmp_path / "other", port=running.port))
    try:
        with pytest.raises((RuntimeError, OSError), match=f"bind.*127.0.0.1:{running.port}"):
            second.start()
    finally:
        second.stop()

    server.stop()
    assert registry.deregistered == ["replica-under-test"]  # on the way out, not left to lapse
    assert registry.replicas() == []


def test_defaults_leave_out_what_is_not_asked_for(make_server, tmp_path):
    (tmp_path / "snapshots").mkdir()
    server = make_server(tmp_path / "snapshots", ewma_enabled=False, compact_snapshots=False)
    running = server.running
    assert running.ewma is None and running.store.on_published is None
    assert running.store.compactor is None
    assert running.store.fetch_missing is None
    assert running.metrics_port is None and running.metrics_http is None
    host, port = running.address.rsplit(":", 1)
    assert (host, int(port)) == ("127.0.0.1", running.port) and running.port > 0
    assert running.advertised == running.address == running.replica_id
    channel = grpc.insecure_channel(running.address)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE_NAME):
            status = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=WAIT_S).status
            assert status == health_pb2.HealthCheckResponse.SERVING, name
    finally:
        channel.close()


class _UnreachableOnExit(InMemoryRegistry):
    def deregister(self, replica_id: str) -> None:
        raise ConnectionError("the registry went away first")


def test_a_registry_gone_at_shutdown_is_logged_and_the_server_still_stops(make_server, tmp_path, caplog):
    (tmp_path / "snapshots").mkdir()
    server = make_server(tmp_path / "snapshots", registry=_UnreachableOnExit(), ewma_enabled=False, replica_id="r-9")
    with caplog.at_level(logging.WARNING, logger="logit_service.server.app"):
        server.stop()
    (warning,) = [r for r in caplog.records if r.name == "logit_service.server.app"]
    assert warning.getMessage() == "could not deregister r-9" and warning.exc_info is not None
    assert server.running is None


def test_a_version_another_writer_leaves_in_the_directory_is_found_by_the_scan(make_server, tmp_path, trained):
    (tmp_path / "snapshots").mkdir()
    registry = InMemoryRegistry()
    server = make_server(tmp_path / "snapshots", registry=registry, ewma_enabled=False, scan_interval_s=0.05)
    assert registry.get(0) is None
    write_snapshot(tmp_path / "snapshots", 0, trained.states[0], trained.config)  # not published: only written
    record = wait_for(lambda: registry.get(0), "the scan to register version 0")
    assert record.digest == read_manifest(tmp_path / "snapshots" / "v00000000").digest
    assert server.running.store.resolve(0) == record


def test_the_registry_lease_is_renewed_while_the_io_threads_are_busy(make_server, tmp_path):
    # A publish's verification or an EWMA fold can hold both I/O threads for longer than the lease (three
    # heartbeats): the replica must stay registered meanwhile.
    (tmp_path / "snapshots").mkdir()
    registry = _CountingRegistry()
    server = make_server(tmp_path / "snapshots", registry=registry, ewma_enabled=False, heartbeat_s=0.05, replica_id="r-1")
    io = next(e for e in server.running.executors if e._thread_name_prefix == "logit-io")
    busy, release = threading.Barrier(3), threading.Event()

    def occupy() -> None:
        busy.wait(WAIT_S)
        release.wait(WAIT_S)

    held = [io.submit(occupy) for _ in range(io._max_workers)]
    try:
        busy.wait(WAIT_S)  # every I/O thread is held from here on
        before = len(registry.heartbeats)
        wait_for(lambda: len(registry.heartbeats) >= before + 5, "heartbeats while the I/O threads are busy", timeout_s=WAIT_S)
        assert [r.replica_id for r in registry.replicas()] == ["r-1"]
    finally:
        release.set()
        for future in held:
            future.result(WAIT_S)


def _threads_of(executor) -> int:
    """torch's thread count on a thread of this executor (each of its threads ran its initializer)."""
    return executor.submit(torch.get_num_threads).result(timeout=WAIT_S)


def test_tensor_ops_run_in_parallel_on_the_compute_thread_only(make_server, tmp_path, trained):
    # Publishing builds and probes the model, the EWMA route folds weights, compaction writes deltas and
    # a Score of an older version prefetches: every path that touches tensors off the compute thread.
    previous = torch.get_num_threads()
    torch.set_num_threads(2)  # the count the compute thread takes up when it starts, below
    try:
        server = make_server(tmp_path / "snapshots", ewma_enabled=True, compact_snapshots=True, compact_keyframe_interval=4)
        with LogitClient(server.address, timeout_s=WAIT_S) as client:
            for version in range(3):
                client.publish(version, trained.states[version], tmp_path / "snapshots", model_config=trained.config)
            tokens = np.arange(1, 40) % trained.config["vocab_size"]
            client.score([SequenceInput(tokens, spans=((2, 1, 20), (0, 20, len(tokens))))])
        running = server.running
        compute, io, decode, beats = running.executors
        assert _threads_of(compute) == 2
        assert (_threads_of(io), _threads_of(decode), _threads_of(running.engine.prefetcher._pool)) == (1, 1, 1)
        assert _threads_of(beats) == 1

        async def on_the_loop_thread() -> int:
            return torch.get_num_threads()

        assert asyncio.run_coroutine_threadsafe(on_the_loop_thread(), server._loop).result(timeout=WAIT_S) == 1
    finally:
        torch.set_num_threads(previous)

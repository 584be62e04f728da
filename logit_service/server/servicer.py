"""The LogitService servicer: converts protobuf to domain types, delegates, converts back.

Blocking work (forwards, disk reads, hashing) runs in executors so health and metadata calls answer
while the model is busy.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
import grpc

from logit_service.errors import DeadlineExceeded, InvalidRequest, RequestTooLarge, VersionNotFound
from logit_service.server.batcher import ScoreBatcher
from logit_service.server.convert import answers_to_proto, sequences_from_proto, spot_check_to_proto, version_to_proto
from logit_service.server.engine import ScoreOptions, ScoringEngine
from logit_service.server.follower import SegmentFollower
from logit_service.server.validation import (
    MAX_HOLDER_BYTES,
    MAX_REQUEST_ID_BYTES,
    MAX_VERSIONS_PER_CALL,
    check_name,
    check_policy_version,
)
from logit_service.server.validation import validate_temperature
from logit_common.snapshots.stream import snapshot_messages
from logit_service.snapshots.incoming import IncomingSnapshot
from logit_service.snapshots.outgoing import stored_snapshot
from logit_service.snapshots.store import SnapshotStore
from logit_service.tensor_threads import serial_tensor_ops
from logit_service.types import ScoreSequence, VersionRecord
from logit_service.v1 import logit_service_pb2 as pb
from logit_service.v1 import logit_service_pb2_grpc as pb_grpc

# A backend's `numerics` attribute -> the flag every Score answer carries.
_NUMERICS = {"training": pb.NUMERICS_TRAINING, "inference": pb.NUMERICS_INFERENCE}

_UPLOAD_CHUNKS_IN_FLIGHT = 8
"""Chunks of one upload received but not yet written (at most 1 MiB each)."""


class LogitServicer(pb_grpc.LogitServiceServicer):
    def __init__(
        self,
        store: SnapshotStore,
        engine: ScoringEngine,
        *,
        compute: ThreadPoolExecutor,
        io: ThreadPoolExecutor,
        decode: ThreadPoolExecutor,
        follower: SegmentFollower,
        batcher: ScoreBatcher,
        max_lease_ttl_s: float = 3600.0,
        max_upload_bytes: int = 1 << 40,
    ) -> None:
        self.store = store
        self.engine = engine
        self.compute = compute
        self.io = io
        self.decode = decode  # converting and validating sequences: per-token work kept off the loop
        self.follower = follower
        self.batcher = batcher  # Score calls waiting for the model are scored together
        self.max_lease_ttl_s = max_lease_ttl_s
        self.max_upload_bytes = max_upload_bytes

    async def Score(self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext) -> pb.ScoreResponse:
        temperature = validate_temperature(request.temperature)
        if not 0.0 <= request.spot_check_fraction <= 1.0:
            raise InvalidRequest(f"spot_check_fraction must lie in [0, 1], got {request.spot_check_fraction}")
        check_name(request.request_id, "request_id", max_bytes=MAX_REQUEST_ID_BYTES)
        loop = asyncio.get_running_loop()
        sequences = await loop.run_in_executor(self.decode, self._sequences, request.sequences)
        remaining = context.time_remaining()
        cancelled = threading.Event()
        context.add_done_callback(lambda _: cancelled.set())
        options = ScoreOptions(
            temperature=temperature,
            allow_ewma_fallback=request.allow_ewma_fallback,
            force_ewma=request.force_ewma,
            spot_check_fraction=request.spot_check_fraction,
            deadline=None if remaining is None else time.monotonic() + remaining,
            cancelled=cancelled,
            seed=hash(request.request_id) & 0xFFFFFFFF,
        )
        if not options.force_ewma:  # answers kept for submitted segments serve this call: let them finish
            await self.follower.until_scored(sequences, temperature, options.deadline)
        outcome = await self.batcher.score(sequences, options)
        return pb.ScoreResponse(
            results=answers_to_proto(outcome.answers),
            tokens_scored=outcome.tokens_scored,
            backend=self.engine.backend.name,
            dtype=self.engine.backend.dtype,
            spot_check=spot_check_to_proto(outcome.spot_check),
            compute_seconds=outcome.compute_seconds,
            numerics=_NUMERICS[getattr(self.engine.backend, "numerics", "training")],
        )

    async def PublishVersion(self, request: pb.PublishVersionRequest, context) -> pb.PublishVersionResponse:
        check_policy_version(request.policy_version)
        if not request.snapshot_path:
            raise InvalidRequest("snapshot_path is empty")
        # The path itself (NUL bytes, length, names, links) is checked by the store, which owns the directory.
        loop = asyncio.get_running_loop()
        record, new = await loop.run_in_executor(self.io, self.store.publish, request.policy_version, request.snapshot_path)
        return pb.PublishVersionResponse(version=self._info(record), already_published=not new)

    async def UploadVersion(self, request_iterator, context) -> pb.PublishVersionResponse:
        loop = asyncio.get_running_loop()
        incoming = IncomingSnapshot(self.store, max_bytes=self.max_upload_bytes)
        # One thread of its own per upload: chunks are written and hashed in arrival order while the
        # next ones are received (at most _UPLOAD_CHUNKS_IN_FLIGHT held), and what is queued last runs last.
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="logit-upload", initializer=serial_tensor_ops)
        in_flight: deque[asyncio.Future] = deque()
        try:
            async for message in request_iterator:
                in_flight.append(loop.run_in_executor(writer, incoming.take, message))
                while in_flight and (len(in_flight) >= _UPLOAD_CHUNKS_IN_FLIGHT or in_flight[0].done()):
                    await in_flight.popleft()
            while in_flight:
                await in_flight.popleft()
            record, new = await loop.run_in_executor(writer, self._install_and_publish, incoming)
        finally:
            for pending in in_flight:  # after an error: chunks not yet written need not be
                pending.cancel()
            # Also when the call is cancelled or runs out of time (this task is cancelled then): queued
            # behind every write, so nothing is written after it; not awaited, so it runs whatever this task's state.
            writer.submit(incoming.discard)
            writer.shutdown(wait=False)
        return pb.PublishVersionResponse(version=self._info(record), already_published=not new)

    def _install_and_publish(self, incoming: IncomingSnapshot):
        incoming.finish()
        path, created = incoming.install()
        try:
            return self.store.publish(incoming.policy_version, path.name, files_verified=created)
        except BaseException:
            if created:  # refused (another model, outside the window): leave no unregistered copy behind
                self.store.remove_dir(path)
            raise

    async def FetchVersion(self, request: pb.FetchVersionRequest, context):
        check_policy_version(request.policy_version)
        loop = asyncio.get_running_loop()
        manifest_json, files = await loop.run_in_executor(self.io, stored_snapshot, self.store, request.policy_version)
        messages = snapshot_messages(request.policy_version, manifest_json, files)
        while (message := await loop.run_in_executor(self.io, next, messages, None)) is not None:
            yield message

    async def GetVersion(self, request: pb.GetVersionRequest, context) -> pb.VersionInfo:
        check_policy_version(request.policy_version)
        loop = asyncio.get_running_loop()
        record = await loop.run_in_executor(self.io, self.store.registry.get, request.policy_version)
        if record is None:
            raise VersionNotFound(f"version {request.policy_version} was never published")
        leased = await loop.run_in_executor(self.io, self.store.leased)
        return self._info(self.store.with_state(record, leased), leased)

    async def LeaseVersions(self, request: pb.LeaseVersionsRequest, context) -> pb.LeaseVersionsResponse:
        check_name(request.holder, "holder", max_bytes=MAX_HOLDER_BYTES, required=True)
        if len(request.policy_versions) > MAX_VERSIONS_PER_CALL:
            raise RequestTooLarge(
                f"{len(request.policy_versions)} versions exceed the limit of {MAX_VERSIONS_PER_CALL} per call",
                limit="max_versions_per_call", limit_value=MAX_VERSIONS_PER_CALL, value=len(request.policy_versions),
            )
        versions = list(dict.fromkeys(int(v) for v in request.policy_versions))
        for v in versions:
            check_policy_version(v, "every policy_version")
        loop = asyncio.get_running_loop()
        if request.release:
            await loop.run_in_executor(self.io, self.store.release, versions, request.holder)
            return pb.LeaseVersionsResponse()
        if not (math.isfinite(request.ttl_s) and 0 < request.ttl_s <= self.max_lease_ttl_s):
            raise InvalidRequest(f"ttl_s must lie in (0, {self.max_lease_ttl_s}], got {request.ttl_s}")
        await loop.run_in_executor(self.io, self.store.lease, versions, request.holder, request.ttl_s)
        return pb.LeaseVersionsResponse(leased_versions=versions, expires_in_s=request.ttl_s)

    async def ListVersions(self, request: pb.ListVersionsRequest, context) -> pb.ListVersionsResponse:
        loop = asyncio.get_running_loop()

        def collect():
            records = self.store.registry.list(include_evicted=request.include_evicted)
            leased = self.store.leased()
            return (
                [self.store.with_state(r, leased) for r in records],
                leased,
                self.store.window(),
                self.store.registry.get_ewma(),
            )

        records, leased, window, ewma = await loop.run_in_executor(self.io, collect)
        return pb.ListVersionsResponse(
            versions=[self._info(r, leased) for r in records],
            latest_version=-1 if window is None else window[1],
            retention_window=self.store.retention_window,
            oldest_retained_version=-1 if window is None else window[0],
            ewma=self._info(ewma) if ewma is not None else None,
        )

    async def SubmitSegments(self, request: pb.SubmitSegmentsRequest, context) -> pb.SubmitSegmentsResponse:
        temperature = validate_temperature(request.temperature)
        sequences = await asyncio.get_running_loop().run_in_executor(self.decode, self._sequences, request.segments)
        accepted = await self.follower.submit(sequences, temperature)
        return pb.SubmitSegmentsResponse(accepted_tokens=accepted, pending_tokens=self.follower.pending_tokens)

    async def Barrier(self, request: pb.BarrierRequest, context) -> pb.BarrierResponse:
        check_policy_version(request.policy_version)
        remaining = context.time_remaining()
        try:
            await asyncio.wait_for(self.follower.barrier(request.policy_version), timeout=remaining)
        except asyncio.TimeoutError:
            raise DeadlineExceeded(
                f"segments of version <= {request.policy_version} were still pending at the deadline "
                f"({self.follower.pending_tokens} tokens pending)"
            ) from None
        return pb.BarrierResponse(pending_tokens=self.follower.pending_tokens, kept_segments=len(self.follower.kept))

    def _sequences(self, sequences) -> list[ScoreSequence]:
        return sequences_from_proto(sequences, max_sequences=self.engine.max_sequences, max_tokens=self.engine.max_tokens)

    def _info(self, record: VersionRecord, leased: set[int] = frozenset()) -> pb.VersionInfo:
        resident = self.engine.backend.resident_digest == record.digest or any(
            e == str(record.policy_version) for e in self.store.cache.keys()
        )
        info = version_to_proto(record, resident=resident)
        info.leased = record.policy_version in leased
        return info


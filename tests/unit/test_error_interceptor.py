"""The error mapping and request decoding of logit_service.server.interceptors over a real gRPC
connection in the test's process: the status and message a caller gets for the service's errors, for an
abort and for a bug, for unary and both streaming kinds; the byte limit, the counts, the in-flight byte
budget and undecodable bytes on unary calls; and what the access log outside it learns of the request."""

from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from logit_service import errors
from logit_service.server.access_log import AccessLogInterceptor
from logit_service.server.interceptors import ErrorInterceptor
from logit_service.server.metrics import ServiceMetrics
from logit_service.server.request_decoding import RequestBytesBudget, RequestDecoder
from logit_service.server.wire_bounds import MAX_METADATA_REQUEST_BYTES, RequestBounds
from logit_service.v1 import logit_service_pb2 as pb
from tests.inprocess_grpc import method, serving, unary

WAIT_S = 30  # a bound for a loaded machine only: every wait below ends on a condition
SCORE = method("Score")
ECHO, TOO_LARGE, BUG, ABORT, HOLD = 1.0, 2.0, 3.0, 4.0, 5.0  # what the Score handler does, by temperature


class Handlers:
    def __init__(self) -> None:
        self.raw_seen: list[bytes] = []
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def score(self, request: pb.ScoreRequest, context) -> pb.ScoreResponse:
        if request.temperature == TOO_LARGE:
            raise errors.RequestTooLarge("the handler finds it too large", limit="some_limit", limit_value=1, value=2)
        if request.temperature == BUG:
            raise RuntimeError("a detail only the server log may hold")
        if request.temperature == ABORT:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "aborted by the handler")
        if request.temperature == HOLD:
            self.entered.set()
            await self.release.wait()
        return pb.ScoreResponse(tokens_scored=len(request.sequences), backend="echo")

    async def raw(self, request: bytes, context) -> bytes:
        self.raw_seen.append(request)
        if request == b"fail":
            raise errors.VersionNotFound("no such version here")
        if request == b"abort":
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, "the raw handler aborts")
        return b"raw:" + request

    async def upload(self, request_iterator, context) -> pb.PublishVersionResponse:
        chunks = [chunk async for chunk in request_iterator]
        if len(chunks) == 1:
            raise errors.InvalidRequest("an upload needs a header and its data")
        if len(chunks) == 2:
            raise RuntimeError("a detail only the server log may hold")
        if len(chunks) == 4:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, "the upload handler aborts")
        # the chunks' own bytes: the handler gets decoded messages
        return pb.PublishVersionResponse(version=pb.VersionInfo(policy_version=sum(c.data.data[0] for c in chunks)))

    async def fetch(self, request: pb.FetchVersionRequest, context):
        yield pb.SnapshotChunk(data=pb.SnapshotData(data=b"first"))
        if request.policy_version == 1:
            raise errors.SnapshotCorrupt("the stored copy changed while it was sent")
        if request.policy_version == 2:
            raise RuntimeError("a detail only the server log may hold")
        if request.policy_version == 3:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, "the fetch handler aborts")
        yield pb.SnapshotChunk(data=pb.SnapshotData(data=b"second"))

    async def bidi(self, request_iterator, context):
        async for chunk in request_iterator:
            yield chunk

    def table(self) -> dict[str, grpc.RpcMethodHandler]:
        return {
            "Score": grpc.unary_unary_rpc_method_handler(
                self.score, request_deserializer=pb.ScoreRequest.FromString,
                response_serializer=pb.ScoreResponse.SerializeToString,
            ),
            "GetVersion": grpc.unary_unary_rpc_method_handler(self.raw),  # no deserializer: raw bytes in and out
            "UploadVersion": grpc.stream_unary_rpc_method_handler(
                self.upload, request_deserializer=pb.SnapshotChunk.FromString,
                response_serializer=pb.PublishVersionResponse.SerializeToString,
            ),
            "FetchVersion": grpc.unary_stream_rpc_method_handler(
                self.fetch, request_deserializer=pb.FetchVersionRequest.FromString,
                response_serializer=pb.SnapshotChunk.SerializeToString,
            ),
            "Barrier": grpc.stream_stream_rpc_method_handler(self.bidi),  # a kind the service does not use
        }  # fmt: skip


@pytest.fixture
def pool():
    with ThreadPoolExecutor(1, thread_name_prefix="decode") as executor:
        yield executor


@pytest.fixture
def handlers():
    return Handlers()


def _interceptor(pool, *, max_request_bytes=2000, max_sequences=3, max_tokens=100, budget_bytes=1 << 20):
    bounds = RequestBounds(max_request_bytes=max_request_bytes, max_sequences=max_sequences, max_tokens=max_tokens)
    return ErrorInterceptor(RequestDecoder(bounds, RequestBytesBudget(budget_bytes), pool))


def _score(temperature=ECHO, sequences=1, tokens=2, versions=(0,), request_id="") -> bytes:
    sequence = pb.Sequence(
        sample_id="s", token_ids=np.arange(tokens, dtype="<i4").tobytes(),
        spans=[pb.VersionSpan(policy_version=v, start=1, end=2) for v in versions],
    )  # fmt: skip
    return pb.ScoreRequest(sequences=[sequence] * sequences, temperature=temperature, request_id=request_id).SerializeToString()


async def test_a_decoded_request_reaches_its_handler(pool, handlers):
    async with serving([_interceptor(pool)], handlers.table()) as channel:
        answer = pb.ScoreResponse.FromString(await unary(channel, "Score", _score(sequences=3)))
        assert (answer.tokens_scored, answer.backend) == (3, "echo")


async def test_a_service_error_keeps_its_status_message_and_fields(pool, handlers):
    async with serving([_interceptor(pool)], handlers.table()) as channel:
        with pytest.raises(errors.RequestTooLarge) as caught:
            await unary(channel, "Score", _score(TOO_LARGE))
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.message == "the handler finds it too large"
    assert caught.value.metadata == {"limit": "some_limit", "limit_value": "1", "value": "2"}


async def test_a_bug_is_internal_with_the_trace_in_the_server_log_only(pool, handlers, caplog):
    caplog.set_level(logging.INFO, logger="logit_service.server.interceptors")
    async with serving([_interceptor(pool)], handlers.table()) as channel:
        with pytest.raises(errors.LogitServiceError) as caught:
            await unary(channel, "Score", _score(BUG))
    assert caught.value.code == grpc.StatusCode.INTERNAL
    assert caught.value.message == f"internal error in {SCORE}; see the server log"
    [record] = [r for r in caplog.records if r.name == "logit_service.server.interceptors"]
    assert record.levelno == logging.ERROR and record.getMessage() == f"{SCORE} failed"
    assert "a detail only the server log may hold" in str(record.exc_info[1])


async def test_a_service_error_is_logged_at_info_with_its_status(pool, handlers, caplog):
    caplog.set_level(logging.INFO, logger="logit_service.server.interceptors")
    async with serving([_interceptor(pool)], handlers.table()) as channel:
        with pytest.raises(errors.RequestTooLarge):
            await unary(channel, "Score", _score(TOO_LARGE))
    [record] = [r for r in caplog.records if r.name == "logit_service.server.interceptors"]
    assert record.levelno == logging.INFO
    assert record.getMessage() == f"{SCORE} -> RESOURCE_EXHAUSTED: the handler finds it too large"
    assert record.exc_info is None


async def test_an_abort_in_a_handler_ends_the_call_as_it_was(pool, handlers):
    async with serving([_interceptor(pool)], handlers.table()) as channel:
        with pytest.raises(errors.LogitServiceError) as caught:
            await unary(channel, "Score", _score(ABORT))
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.message == "aborted by the handler"


async def test_a_request_over_the_byte_limit_is_refused_before_it_is_decoded(pool, handlers):
    async with serving([_interceptor(pool, max_request_bytes=100)], handlers.table()) as channel:
        raw = _score(tokens=30)
        assert len(raw) > 100
        with pytest.raises(errors.RequestTooLarge) as caught:
            await unary(channel, "Score", raw)
    assert caught.value.message == f"{len(raw)} bytes exceed the limit of 100 bytes per Score request"
    assert caught.value.metadata == {"limit": "max_request_bytes", "limit_value": "100", "value": str(len(raw))}


async def test_too_many_sequences_and_undecodable_bytes_are_refused_with_their_statuses(pool, handlers):
    async with serving([_interceptor(pool, max_sequences=2)], handlers.table()) as channel:
        with pytest.raises(errors.RequestTooLarge) as too_many:
            await unary(channel, "Score", _score(sequences=3))
        with pytest.raises(errors.InvalidRequest) as torn:
            await unary(channel, "Score", _score()[:-1])
    assert too_many.value.metadata["limit"] == "max_sequences_per_request"
    assert torn.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert torn.value.message.startswith("the request bytes do not decode as a Score request")


async def test_a_call_holds_its_request_bytes_until_it_ends(pool, handlers):
    first, second = _score(HOLD), _score()
    budget = len(first) + len(second) - 1  # both at once are one byte too many
    async with serving([_interceptor(pool, budget_bytes=budget)], handlers.table()) as channel:
        held = asyncio.ensure_future(unary(channel, "Score", first))
        await asyncio.wait_for(handlers.entered.wait(), WAIT_S)
        with pytest.raises(errors.Overloaded) as caught:
            await unary(channel, "Score", second)
        assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert caught.value.message.startswith(f"{len(first)} bytes of requests are already being decoded or served")
        handlers.release.set()
        await held
        for _ in range(2):  # given back after the call, whether it succeeded or failed
            assert pb.ScoreResponse.FromString(await unary(channel, "Score", second)).backend == "echo"
            with pytest.raises(errors.RequestTooLarge):
                await unary(channel, "Score", _score(TOO_LARGE))


async def test_the_access_log_outside_names_the_request_id_and_versions_decoded_inside(pool, handlers, caplog):
    caplog.set_level(logging.INFO, logger="logit_service.access")
    access = AccessLogInterceptor(ServiceMetrics(), log_format="json")
    async with serving([access, _interceptor(pool)], handlers.table()) as channel:
        await unary(channel, "Score", _score(versions=(7, 3), request_id="req-42"))
    [record] = [r for r in caplog.records if r.name == "logit_service.access"]
    entry = json.loads(record.getMessage())
    assert (entry["request_id"], entry["method"], entry["status"], entry["versions"]) == ("req-42", "Score", "OK", [3, 7])


async def test_a_handler_without_a_deserializer_gets_the_raw_bytes_and_its_errors_mapped(pool, handlers):
    async with serving([_interceptor(pool)], handlers.table()) as channel:
        assert await unary(channel, "GetVersion", b"\xff\x00bytes") == b"raw:\xff\x00bytes"
        with pytest.raises(errors.VersionNotFound, match="^no such version here$"):
            await unary(channel, "GetVersion", b"fail")
        with pytest.raises(errors.LogitServiceError) as aborted:
            await unary(channel, "GetVersion", b"abort")
    assert (aborted.value.code, aborted.value.message) == (grpc.StatusCode.ALREADY_EXISTS, "the raw handler aborts")
    assert handlers.raw_seen == [b"\xff\x00bytes", b"fail", b"abort"]


def _upload(channel, count: int):
    chunks = [pb.SnapshotChunk(data=pb.SnapshotData(data=bytes([10 + i]))) for i in range(count)]
    return channel.stream_unary(
        method("UploadVersion"), request_serializer=pb.SnapshotChunk.SerializeToString,
        response_deserializer=pb.PublishVersionResponse.FromString,
    )(iter(chunks), timeout=WAIT_S)  # fmt: skip


async def test_a_request_stream_gets_its_answer_or_its_error_s_status(pool, handlers):
    async with serving([_interceptor(pool)], handlers.table()) as channel:
        assert (await _upload(channel, 3)).version.policy_version == 10 + 11 + 12
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await _upload(channel, 1)
        with pytest.raises(grpc.aio.AioRpcError) as bug:
            await _upload(channel, 2)
        with pytest.raises(grpc.aio.AioRpcError) as aborted:
            await _upload(channel, 4)
    assert (aborted.value.code(), aborted.value.details()) == (grpc.StatusCode.ALREADY_EXISTS, "the upload handler aborts")
    assert (invalid.value.code(), invalid.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT, "an upload needs a header and its data",
    )  # fmt: skip
    assert dict(invalid.value.trailing_metadata())["logit-service-error"] == "InvalidRequest"
    assert (bug.value.code(), bug.value.details()) == (
        grpc.StatusCode.INTERNAL, f"internal error in {method('UploadVersion')}; see the server log",
    )  # fmt: skip


async def _fetch(channel, version: int) -> tuple[list[bytes], grpc.StatusCode, str]:
    stream = channel.unary_stream(
        method("FetchVersion"), request_serializer=pb.FetchVersionRequest.SerializeToString,
        response_deserializer=pb.SnapshotChunk.FromString,
    )(pb.FetchVersionRequest(policy_version=version), timeout=WAIT_S)  # fmt: skip
    received = []
    try:
        async for chunk in stream:
            received.append(chunk.data.data)
    except grpc.aio.AioRpcError:
        pass
    return received, await stream.code(), await stream.details()


async def test_a_response_stream_that_fails_midway_delivers_what_it_sent_then_its_status(pool, handlers):
    async with serving([_interceptor(pool)], handlers.table()) as channel:
        assert (await _fetch(channel, 0))[:2] == ([b"first", b"second"], grpc.StatusCode.OK)
        assert await _fetch(channel, 1) == (
            [b"first"], grpc.StatusCode.DATA_LOSS, "the stored copy changed while it was sent",
        )  # fmt: skip
        assert await _fetch(channel, 2) == (
            [b"first"], grpc.StatusCode.INTERNAL, f"internal error in {method('FetchVersion')}; see the server log",
        )  # fmt: skip
        assert await _fetch(channel, 3) == ([b"first"], grpc.StatusCode.ALREADY_EXISTS, "the fetch handler aborts")


async def test_a_bidirectional_stream_passes_through_untouched(pool, handlers):
    async with serving([_interceptor(pool)], handlers.table()) as channel:
        call = channel.stream_stream(method("Barrier"), request_serializer=None, response_deserializer=None)(
            iter([b"a", b"b"]), timeout=WAIT_S
        )
        assert [message async for message in call] == [b"a", b"b"]


async def test_probes_are_not_held_to_the_service_s_byte_limits(pool, handlers):
    async with serving([_interceptor(pool)], handlers.table()) as channel:
        name = "x" * (MAX_METADATA_REQUEST_BYTES + 1)  # over every limit a service method has
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=name), timeout=WAIT_S)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # the health service's own answer

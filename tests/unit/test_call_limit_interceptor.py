"""The concurrent-call limits of logit_service.server.call_limits over a real gRPC connection in the
test's process: each limit at its edge, the refusal a caller over it gets, that API calls and probes
never take each other's slots, and that every kind of handler gives its slot back when it ends."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from logit_client.retry import error_from_rpc
from logit_service import errors
from logit_service.server.call_limits import CallLimitInterceptor
from logit_service.v1 import logit_service_pb2 as pb
from tests.inprocess_grpc import method, serving, status_of, unary

WAIT_S = 30  # a bound for a loaded machine only: every wait below ends on a condition


class Gate:
    """Handlers that enter and wait until the test opens the gate; the test waits until n are inside."""

    def __init__(self) -> None:
        self.inside = 0
        self.entered = 0
        self._changed = asyncio.Event()
        self.open = asyncio.Event()

    async def hold(self) -> None:
        self.entered += 1
        self.inside += 1
        self._changed.set()
        try:
            await self.open.wait()
        finally:
            self.inside -= 1

    async def until_inside(self, n: int) -> None:
        async def wait() -> None:
            while self.inside < n:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), WAIT_S)


def _handlers(gate: Gate) -> dict[str, grpc.RpcMethodHandler]:
    async def score(request: pb.ScoreRequest, context) -> pb.ScoreResponse:
        if request.temperature == 2.0:  # the test's way to ask for a call that waits at the gate
            await gate.hold()
        if request.temperature == 3.0:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this call fails")
        return pb.ScoreResponse(tokens_scored=len(request.sequences), backend="echo")

    async def fetch(request: pb.FetchVersionRequest, context):
        yield _chunk(b"first")
        await gate.hold()
        yield _chunk(b"second")

    async def fetch_by_write(request, context) -> None:  # writes with context.write and returns nothing
        await context.write(_chunk(b"written"))
        await gate.hold()

    async def upload(request_iterator, context) -> pb.PublishVersionResponse:
        chunks = [chunk async for chunk in request_iterator]
        await gate.hold()
        return pb.PublishVersionResponse(version=pb.VersionInfo(policy_version=len(chunks)))

    async def barrier(request_iterator, context):  # a bidirectional stream: echoes, then waits at the gate
        async for chunk in request_iterator:
            yield chunk
        await gate.hold()

    def unary_handler(behavior, request_class, response_class):
        return grpc.unary_unary_rpc_method_handler(
            behavior, request_deserializer=request_class.FromString, response_serializer=response_class.SerializeToString
        )

    return {
        "Score": unary_handler(score, pb.ScoreRequest, pb.ScoreResponse),
        "FetchVersion": grpc.unary_stream_rpc_method_handler(
            fetch, request_deserializer=pb.FetchVersionRequest.FromString, response_serializer=pb.SnapshotChunk.SerializeToString
        ),
        # registered under another real name of the service, so both streaming styles are served
        "GetVersion": grpc.unary_stream_rpc_method_handler(
            fetch_by_write, request_deserializer=pb.FetchVersionRequest.FromString,
            response_serializer=pb.SnapshotChunk.SerializeToString,
        ),
        "Barrier": grpc.stream_stream_rpc_method_handler(
            barrier, request_deserializer=pb.SnapshotChunk.FromString, response_serializer=pb.SnapshotChunk.SerializeToString
        ),
        "UploadVersion": grpc.stream_unary_rpc_method_handler(
            upload, request_deserializer=pb.SnapshotChunk.FromString,
            response_serializer=pb.PublishVersionResponse.SerializeToString,
        ),
    }  # fmt: skip


def _chunk(data: bytes) -> pb.SnapshotChunk:
    return pb.SnapshotChunk(data=pb.SnapshotData(data=data))


def _score_bytes(temperature: float = 1.0, sequences: int = 1) -> bytes:
    return pb.ScoreRequest(temperature=temperature, sequences=[pb.Sequence()] * sequences).SerializeToString()


async def _score(channel, temperature: float = 1.0, sequences: int = 1) -> pb.ScoreResponse:
    return pb.ScoreResponse.FromString(await unary(channel, "Score", _score_bytes(temperature, sequences)))


async def _limit_is_exact(channel, gate: Gate, limit: int) -> None:
    """`limit` held calls run and one more is refused naming `limit` in use: every earlier call gave
    back exactly its one slot."""
    gate.open.clear()
    held = [asyncio.ensure_future(_score(channel, 2.0)) for _ in range(limit)]
    await gate.until_inside(limit)
    with pytest.raises(errors.Overloaded) as caught:
        await _score(channel)
    assert caught.value.metadata["value"] == str(limit)
    gate.open.set()
    await asyncio.gather(*held)


@pytest.fixture
def gate():
    return Gate()


def _limits(api: int, probes: int) -> CallLimitInterceptor:
    return CallLimitInterceptor(max_api_calls=api, max_probe_calls=probes)


async def test_calls_up_to_the_limit_run_and_one_more_is_refused_at_once(gate):
    async with serving([_limits(2, 4)], _handlers(gate)) as channel:
        held = [asyncio.ensure_future(_score(channel, 2.0, sequences=n)) for n in (1, 2)]
        await gate.until_inside(2)
        with pytest.raises(errors.Overloaded) as caught:
            await _score(channel)
        assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert caught.value.message == "2 calls are already in progress (limit 2); retry later"
        assert caught.value.metadata == {"limit": "max_concurrent_rpcs", "limit_value": "2", "value": "2"}
        assert gate.entered == 2  # the refused call never reached its handler
        gate.open.set()
        assert [(r.tokens_scored, r.backend) for r in await asyncio.gather(*held)] == [(1, "echo"), (2, "echo")]
        for _ in range(3):  # the slots were given back
            assert (await _score(channel)).backend == "echo"
        await _limit_is_exact(channel, gate, 2)


async def test_a_call_that_fails_gives_its_slot_back(gate):
    async with serving([_limits(1, 1)], _handlers(gate)) as channel:
        for _ in range(3):
            assert await status_of(channel, "Score", _score_bytes(3.0)) == grpc.StatusCode.FAILED_PRECONDITION
        assert (await _score(channel)).backend == "echo"
        await _limit_is_exact(channel, gate, 1)


async def test_an_open_response_stream_holds_an_api_slot_until_it_ends(gate):
    async with serving([_limits(1, 4)], _handlers(gate)) as channel:
        stream = channel.unary_stream(
            method("FetchVersion"), request_serializer=pb.FetchVersionRequest.SerializeToString,
            response_deserializer=pb.SnapshotChunk.FromString,
        )(pb.FetchVersionRequest(policy_version=1), timeout=WAIT_S)  # fmt: skip
        assert (await stream.read()).data.data == b"first"
        await gate.until_inside(1)
        with pytest.raises(errors.Overloaded, match=r"^1 calls are already in progress \(limit 1\)"):
            await _score(channel)
        gate.open.set()
        assert (await stream.read()).data.data == b"second"
        assert await stream.read() is grpc.aio.EOF
        assert await stream.code() == grpc.StatusCode.OK
        assert (await _score(channel)).backend == "echo"
        await _limit_is_exact(channel, gate, 1)


async def test_a_handler_that_writes_its_stream_holds_a_slot_and_its_messages_arrive(gate):
    async with serving([_limits(1, 4)], _handlers(gate)) as channel:
        stream = channel.unary_stream(
            method("GetVersion"), request_serializer=pb.FetchVersionRequest.SerializeToString,
            response_deserializer=pb.SnapshotChunk.FromString,
        )(pb.FetchVersionRequest(policy_version=1), timeout=WAIT_S)  # fmt: skip
        assert (await stream.read()).data.data == b"written"
        await gate.until_inside(1)
        assert await status_of(channel, "Score", _score_bytes()) == grpc.StatusCode.RESOURCE_EXHAUSTED
        gate.open.set()
        assert await stream.read() is grpc.aio.EOF
        assert await stream.code() == grpc.StatusCode.OK
        assert (await _score(channel)).backend == "echo"
        await _limit_is_exact(channel, gate, 1)


async def test_a_request_stream_holds_a_slot_and_gets_its_answer(gate):
    async with serving([_limits(1, 4)], _handlers(gate)) as channel:
        upload = channel.stream_unary(
            method("UploadVersion"), request_serializer=pb.SnapshotChunk.SerializeToString,
            response_deserializer=pb.PublishVersionResponse.FromString,
        )(iter([_chunk(b"a"), _chunk(b"b")]), timeout=WAIT_S)  # fmt: skip
        await gate.until_inside(1)
        assert await status_of(channel, "Score", _score_bytes()) == grpc.StatusCode.RESOURCE_EXHAUSTED
        gate.open.set()
        assert (await upload).version.policy_version == 2
        assert (await _score(channel)).backend == "echo"
        await _limit_is_exact(channel, gate, 1)


async def test_a_bidirectional_stream_holds_a_slot_and_gets_its_messages(gate):
    async with serving([_limits(1, 4)], _handlers(gate)) as channel:
        barrier = channel.stream_stream(
            method("Barrier"), request_serializer=pb.SnapshotChunk.SerializeToString,
            response_deserializer=pb.SnapshotChunk.FromString,
        )(iter([_chunk(b"a"), _chunk(b"b")]), timeout=WAIT_S)  # fmt: skip
        assert [(await barrier.read()).data.data for _ in range(2)] == [b"a", b"b"]
        await gate.until_inside(1)
        assert await status_of(channel, "Score", _score_bytes()) == grpc.StatusCode.RESOURCE_EXHAUSTED
        gate.open.set()
        assert await barrier.read() is grpc.aio.EOF
        assert await barrier.code() == grpc.StatusCode.OK
        await _limit_is_exact(channel, gate, 1)


async def _watch(channel):
    """An open health watch that has its first answer, or the status that refused it."""
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=WAIT_S)
    try:
        return watch, (await watch.read()).status
    except grpc.aio.AioRpcError as e:
        return watch, e


async def test_probes_have_their_own_limit_and_cannot_starve_the_api(gate):
    async with serving([_limits(1, 2)], _handlers(gate)) as channel:
        opened = [await _watch(channel) for _ in range(3)]
        try:
            assert [status for _, status in opened[:2]] == [health_pb2.HealthCheckResponse.SERVING] * 2
            refused = opened[2][1]
            assert isinstance(refused, grpc.aio.AioRpcError) and refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert refused.details() == "2 health or reflection calls are already in progress (limit 2); retry later"
            typed = error_from_rpc(refused, "in-process")
            assert isinstance(typed, errors.Overloaded)
            assert typed.metadata == {"limit": "max_probe_rpcs", "limit_value": "2", "value": "2"}
            for _ in range(3):  # the API's one slot is free whatever the probes hold
                assert (await _score(channel)).backend == "echo"
        finally:
            for watch, _ in opened:
                watch.cancel()


async def test_the_api_s_calls_cannot_starve_the_probes(gate):
    async with serving([_limits(1, 1)], _handlers(gate)) as channel:
        held = asyncio.ensure_future(_score(channel, 2.0))
        await gate.until_inside(1)
        check = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=WAIT_S)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        gate.open.set()
        await held


async def test_an_unknown_method_is_unimplemented_not_counted(gate):
    async with serving([_limits(1, 1)], _handlers(gate)) as channel:
        assert await status_of(channel, "NoSuchMethod") == grpc.StatusCode.UNIMPLEMENTED
        assert (await _score(channel)).backend == "echo"

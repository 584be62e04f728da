"""logit_service.server.request_decoding on real serialized requests: the in-flight byte budget at its
edge, the wire-format bounds checked before protobuf decodes anything, the error for bytes that do not
decode, the versions a request names, and which thread pays for the decode."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from logit_service.errors import InvalidRequest, Overloaded, RequestTooLarge
from logit_service.server.request_decoding import INLINE_DECODE_BYTES, RequestBytesBudget, RequestDecoder
from logit_service.server.wire_bounds import RequestBounds
from logit_service.v1 import logit_service_pb2 as pb

SCORE = "/logit_service.v1.LogitService/Score"
LEASE = "/logit_service.v1.LogitService/LeaseVersions"


def _score(*spans: tuple[int, int, int], tokens: int = 4) -> bytes:
    sequence = pb.Sequence(
        sample_id="s",
        token_ids=np.arange(tokens, dtype="<i4").tobytes(),
        spans=[pb.VersionSpan(policy_version=v, start=a, end=b) for v, a, b in spans],
    )
    return pb.ScoreRequest(sequences=[sequence], temperature=1.0).SerializeToString()


@pytest.fixture
def pool():
    with ThreadPoolExecutor(1, thread_name_prefix="decode") as executor:
        yield executor


def _decoder(pool, *, max_sequences=4, max_tokens=10_000) -> RequestDecoder:
    bounds = RequestBounds(max_request_bytes=1 << 20, max_sequences=max_sequences, max_tokens=max_tokens)
    return RequestDecoder(bounds, RequestBytesBudget(1 << 20), pool)


def test_a_budget_admits_up_to_its_limit_and_refuses_a_byte_more_while_held():
    budget = RequestBytesBudget(100)
    with budget.hold(60):
        with budget.hold(40):
            assert budget.in_use == 100
        with pytest.raises(
            Overloaded,
            match="^60 bytes of requests are already being decoded or served and 41 more would exceed the limit of 100; retry later$",
        ):
            with budget.hold(41):
                pass
        assert budget.in_use == 60  # the refused request holds nothing
    assert budget.in_use == 0


def test_a_request_larger_than_the_whole_budget_is_served_when_nothing_else_is():
    budget = RequestBytesBudget(100)
    with budget.hold(1000):
        assert budget.in_use == 1000
        with pytest.raises(Overloaded):
            with budget.hold(1):
                pass
    assert budget.in_use == 0


def test_a_held_request_gives_its_bytes_back_when_it_fails():
    budget = RequestBytesBudget(100)
    with pytest.raises(ValueError):
        with budget.hold(70):
            raise ValueError("the call failed")
    assert budget.in_use == 0
    with budget.hold(100):
        pass


async def test_a_request_decodes_into_its_message_and_the_versions_it_names(pool):
    raw = _score((7, 1, 2), (3, 2, 4))
    request, versions = await _decoder(pool).decode(SCORE, raw, pb.ScoreRequest.FromString)
    assert request == pb.ScoreRequest.FromString(raw)
    assert versions == [3, 7]


async def test_a_metadata_request_names_its_versions_too(pool):
    raw = pb.LeaseVersionsRequest(policy_versions=[9, 2, 9]).SerializeToString()
    _, versions = await _decoder(pool).decode(LEASE, raw, pb.LeaseVersionsRequest.FromString)
    assert versions == [2, 9]


async def test_the_wire_bounds_refuse_before_protobuf_decodes(pool):
    decoded = []

    def deserialize(raw: bytes):
        decoded.append(raw)
        return pb.ScoreRequest.FromString(raw)

    two = pb.ScoreRequest(sequences=[pb.Sequence(sample_id="a"), pb.Sequence(sample_id="b")]).SerializeToString()
    with pytest.raises(RequestTooLarge, match="sequences exceed the limit of 1 per request"):
        await _decoder(pool, max_sequences=1).decode(SCORE, two, deserialize)
    assert decoded == []


async def test_bytes_that_do_not_decode_are_an_invalid_request_naming_the_method(pool):
    torn = _score((0, 1, 2))[:-1]  # the last span's field cut short
    with pytest.raises(InvalidRequest, match="^the request bytes do not decode as a ") as caught:
        await _decoder(pool).decode(SCORE, torn, pb.ScoreRequest.FromString)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    bad_utf8 = pb.Sequence(sample_id="x").SerializeToString().replace(b"x", b"\xff")
    raw = b"\x0a" + bytes([len(bad_utf8)]) + bad_utf8  # field 1 of ScoreRequest holding that sequence
    with pytest.raises(InvalidRequest, match="^the request bytes do not decode as a Score request: "):
        await _decoder(pool).decode(SCORE, raw, pb.ScoreRequest.FromString)


async def test_a_small_request_decodes_on_the_loop_and_a_large_one_on_the_pool(pool):
    threads = []

    def deserialize(raw: bytes):
        threads.append(threading.current_thread().name)
        return pb.ScoreRequest.FromString(raw)

    loop_thread = threading.current_thread().name
    small = _score((0, 1, 2))
    large = _score((0, 1, 2), tokens=2000)
    assert len(small) <= INLINE_DECODE_BYTES < len(large)
    decoder = _decoder(pool)
    await decoder.decode(SCORE, small, deserialize)
    await decoder.decode(SCORE, large, deserialize)
    assert threads[0] == loop_thread
    assert threads[1].startswith("decode")


async def test_a_request_of_exactly_the_inline_size_decodes_on_the_loop_and_a_byte_more_does_not(pool):
    threads = []

    def deserialize(raw: bytes):
        threads.append(threading.current_thread().name)
        return pb.ScoreRequest.FromString(raw)

    loop_thread = threading.current_thread().name
    # An unknown field of ScoreRequest (number 15, length-delimited) pads the request to the size wanted.
    def padded(size: int) -> bytes:
        base = pb.ScoreRequest(temperature=1.0).SerializeToString()
        for filler in range(size):
            raw = base + b"\x7a" + _varint(filler) + b"\0" * filler
            if len(raw) == size:
                return raw
        raise AssertionError(size)

    decoder = _decoder(pool)
    await decoder.decode(SCORE, padded(INLINE_DECODE_BYTES), deserialize)
    await decoder.decode(SCORE, padded(INLINE_DECODE_BYTES + 1), deserialize)
    assert threads[0] == loop_thread
    assert threads[1].startswith("decode")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)

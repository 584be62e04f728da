"""Errors over the real wire in gRPC's standard rich error model: every error class the client maps
arrives as a google.rpc.Status with one ErrorInfo (domain, reason = the class, metadata = its fields),
gRPC's own parser (grpcio-status) reads it, and the client maps it back to the class, metadata included,
even without the older class-name trailer."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from logit_client import AsyncLogitClient, LogitClient, SequenceInput
from logit_client.retry import error_from_rpc
from logit_common import errors
from logit_common.rich_status import ERROR_CLASS_KEY, ERROR_DOMAIN
from logit_common.snapshots.writer import write_snapshot
from logit_common.v1 import logit_service_pb2 as pb
from logit_common.v1 import logit_service_pb2_grpc as pb_grpc
from logit_service.config import ServerConfig
from logit_service.server.app import ServerThread
from tests.helpers import VOCAB, random_tokens
from tests.redis_server import running_redis_server

PUBLISHER = "publisher-token-0123456789"
READER = "reader-token-0123456789ab"
MAX_TOKENS = 64
MAX_SEQUENCES = 4
MAX_PENDING = 40
TOKENS = random_tokens(20, seed=0)


def _sequence(tokens, *spans: tuple[int, int, int]) -> pb.Sequence:
    return pb.Sequence(
        token_ids=tokens.astype("<i4").tobytes(),
        spans=[pb.VersionSpan(policy_version=v, start=s, end=e) for v, s, e in spans],
    )


def _auth(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


@pytest.fixture(scope="module")
def served(tmp_path_factory, trained):
    """Versions 0..3 with a window of 2 ([2, 3]), small request, lease and pending limits, two roles."""
    snapshot_dir = tmp_path_factory.mktemp("rich") / "snapshots"
    readers = snapshot_dir.parent / "readers"
    readers.write_text(READER + "\n")
    config = ServerConfig(
        snapshot_dir=snapshot_dir, port=0, retention_window=2, max_tokens_per_request=MAX_TOKENS,
        max_sequences_per_request=MAX_SEQUENCES, max_leased_versions=1, max_pending_tokens=MAX_PENDING,
        auth_token=PUBLISHER, reader_token_file=readers,
    )
    server = ServerThread(config).start()
    with LogitClient(server.address, auth_token=PUBLISHER, timeout_s=60) as client:
        for version in range(4):
            client.publish_version(version, trained.write(snapshot_dir, version).name)
    yield server, snapshot_dir
    server.stop()


@pytest.fixture(scope="module")
def stub(served):
    channel = grpc.insecure_channel(served[0].address)
    yield pb_grpc.LogitServiceStub(channel)
    channel.close()


@dataclass(frozen=True)
class Case:
    error: type[errors.LogitServiceError]
    call: Callable  # (stub, snapshot_dir, trained) -> None; must fail
    metadata: dict[str, str]


def _publish_unknown_architecture(stub, snapshot_dir, trained):
    path = write_snapshot(snapshot_dir, 5, trained.states[0], {**trained.config, "model_type": "no_such_lm"})
    stub.PublishVersion(pb.PublishVersionRequest(policy_version=5, snapshot_path=path.name), metadata=_auth(PUBLISHER), timeout=60)


OUT_OF_VOCAB = TOKENS.copy()
OUT_OF_VOCAB[5] = VOCAB

CASES = {
    "invalid request": Case(
        errors.InvalidRequest,
        lambda stub, *_: stub.Score(pb.ScoreRequest(sequences=[_sequence(OUT_OF_VOCAB, (3, 1, 20))]), metadata=_auth(READER), timeout=60),
        {},
    ),
    "model rejected": Case(errors.ModelRejected, _publish_unknown_architecture, {}),
    "version not found": Case(
        errors.VersionNotFound,
        lambda stub, *_: stub.GetVersion(pb.GetVersionRequest(policy_version=9), metadata=_auth(READER), timeout=60),
        {},
    ),
    "version outside the window": Case(
        errors.VersionOutsideWindow,
        lambda stub, *_: stub.Score(pb.ScoreRequest(sequences=[_sequence(TOKENS, (0, 1, 20))]), metadata=_auth(READER), timeout=60),
        {"limit": "retention_window", "limit_value": "2", "policy_version": "0", "oldest_retained_version": "2", "latest_version": "3"},
    ),
    "too many tokens": Case(
        errors.RequestTooLarge,
        lambda stub, *_: stub.Score(
            pb.ScoreRequest(sequences=[_sequence(random_tokens(MAX_TOKENS + 1, 1), (3, 1, MAX_TOKENS + 1))]), metadata=_auth(READER), timeout=60
        ),
        {"limit": "max_tokens_per_request", "limit_value": str(MAX_TOKENS), "value": str(MAX_TOKENS + 1)},
    ),
    "too many sequences": Case(
        errors.RequestTooLarge,
        lambda stub, *_: stub.Score(
            pb.ScoreRequest(sequences=[_sequence(TOKENS[:4], (3, 1, 4))] * (MAX_SEQUENCES + 1)), metadata=_auth(READER), timeout=60
        ),
        {"limit": "max_sequences_per_request", "limit_value": str(MAX_SEQUENCES), "value": str(MAX_SEQUENCES + 1)},
    ),
    "too many versions in one lease call": Case(
        errors.RequestTooLarge,
        lambda stub, *_: stub.LeaseVersions(
            pb.LeaseVersionsRequest(holder="h", policy_versions=list(range(1025)), ttl_s=60), metadata=_auth(PUBLISHER), timeout=60
        ),
        {"limit": "max_versions_per_call", "limit_value": "1024", "value": "1025"},
    ),
    "lease limit": Case(
        errors.LeaseLimit,
        lambda stub, *_: stub.LeaseVersions(
            pb.LeaseVersionsRequest(holder="h", policy_versions=[2, 3], ttl_s=60), metadata=_auth(PUBLISHER), timeout=60
        ),
        {"limit": "max_leased_versions", "limit_value": "1", "value": "2"},
    ),
    "pending segments over the limit": Case(
        errors.Overloaded,
        lambda stub, *_: stub.SubmitSegments(
            pb.SubmitSegmentsRequest(segments=[_sequence(random_tokens(50, 2), (3, 1, 50))]), metadata=_auth(PUBLISHER), timeout=60
        ),
        {"limit": "max_pending_tokens", "limit_value": str(MAX_PENDING), "value": "50"},
    ),
    "no token": Case(
        errors.Unauthenticated,
        lambda stub, *_: stub.ListVersions(pb.ListVersionsRequest(), timeout=60),
        {},
    ),
    "a reader publishing": Case(
        errors.PermissionDenied,
        lambda stub, *_: stub.PublishVersion(
            pb.PublishVersionRequest(policy_version=3, snapshot_path="v00000003"), metadata=_auth(READER), timeout=60
        ),
        {"method": "PublishVersion"},
    ),
}


def _failure(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def _error_info(rpc_error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo, read with gRPC's own parser: what any grpcio user would do."""
    status = rpc_status.from_call(rpc_error)  # raises if the rich status disagrees with the call's status
    assert status is not None, "no google.rpc.Status in the trailers"
    assert status.code == rpc_error.code().value[0] and status.message == rpc_error.details()
    infos = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        assert detail.Unpack(info), f"a detail that is not an ErrorInfo: {detail.type_url}"
        infos.append(info)
    assert len(infos) == 1
    return infos[0]


class _WithoutOlderTrailer:
    """The failed call as a peer that sends only the rich status would deliver it."""

    def __init__(self, rpc_error: grpc.RpcError) -> None:
        self._error = rpc_error

    def code(self):
        return self._error.code()

    def details(self):
        return self._error.details()

    def trailing_metadata(self):
        return tuple((k, v) for k, v in self._error.trailing_metadata() if k != ERROR_CLASS_KEY)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_the_rich_status_is_present_parses_and_maps_back(served, stub, trained, case):
    _, snapshot_dir = served
    rpc_error = _failure(lambda: case.call(stub, snapshot_dir, trained))
    assert rpc_error.code() == case.error.code

    info = _error_info(rpc_error)
    assert info.domain == ERROR_DOMAIN
    assert info.reason == case.error.reason
    assert dict(info.metadata) == {**case.metadata, "retryable": "true" if case.error.retryable else "false"}
    # The older trailer is still sent, for clients from before the rich status.
    assert (ERROR_CLASS_KEY, case.error.__name__) in tuple(rpc_error.trailing_metadata())

    for seen in (rpc_error, _WithoutOlderTrailer(rpc_error)):
        mapped = error_from_rpc(seen, "target")
        assert type(mapped) is case.error
        assert mapped.metadata == case.metadata and mapped.message == rpc_error.details()


def test_the_client_raises_the_class_with_its_metadata(served):
    server, _ = served
    with LogitClient(server.address, auth_token=READER, timeout_s=60) as client:
        with pytest.raises(errors.VersionOutsideWindow) as info:
            client.score([SequenceInput(TOKENS, spans=((0, 1, 20),))])
    assert info.value.metadata["oldest_retained_version"] == "2" and info.value.metadata["limit_value"] == "2"


def test_the_asyncio_client_maps_the_rich_status_too(served):
    server, _ = served

    async def score_too_much():
        async with AsyncLogitClient(server.address, auth_token=READER, timeout_s=60, max_retries=0) as client:
            await client.score([SequenceInput(random_tokens(MAX_TOKENS + 1, 3), spans=((3, 1, MAX_TOKENS + 1),))])

    with pytest.raises(errors.RequestTooLarge) as info:
        asyncio.run(score_too_much())
    assert info.value.metadata == {"limit": "max_tokens_per_request", "limit_value": str(MAX_TOKENS), "value": str(MAX_TOKENS + 1)}


def test_errors_that_change_what_is_stored(make_server, snapshot_dir, trained, tmp_path):
    """Conflict, corruption and non-finite log-probs, on a server of their own."""
    server = make_server(snapshot_dir, retention_window=4, cache_bytes=0)  # every score reads the disk
    with LogitClient(server.address, timeout_s=60) as client:
        for version in range(2):
            client.publish_version(version, trained.write(snapshot_dir, version).name)
    channel = grpc.insecure_channel(server.address)
    stub = pb_grpc.LogitServiceStub(channel)
    try:
        (snapshot_dir / "v00000001").rename(tmp_path / "v00000001-published")
        other = write_snapshot(snapshot_dir, 1, trained.states[0], trained.config)  # other weights, same name
        conflict = _failure(lambda: stub.PublishVersion(pb.PublishVersionRequest(policy_version=1, snapshot_path=other.name), timeout=60))

        inf_weights = {k: v.clone() for k, v in trained.states[2].items()}
        inf_weights["lm_head.weight"][7] = float("inf")  # every logit of token 7 overflows
        path = write_snapshot(snapshot_dir, 2, inf_weights, trained.config)
        stub.PublishVersion(pb.PublishVersionRequest(policy_version=2, snapshot_path=path.name), timeout=60)
        non_finite = _failure(lambda: stub.Score(pb.ScoreRequest(sequences=[_sequence(TOKENS, (2, 1, 20))]), timeout=60))

        weights = snapshot_dir / "v00000000" / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-3] ^= 0xFF
        weights.write_bytes(bytes(data))
        corrupt = _failure(lambda: stub.Score(pb.ScoreRequest(sequences=[_sequence(TOKENS, (0, 1, 20))]), timeout=60))
    finally:
        channel.close()
    for rpc_error, cls in ((conflict, errors.VersionConflict), (non_finite, errors.NonFiniteLogprobs), (corrupt, errors.SnapshotCorrupt)):
        info = _error_info(rpc_error)
        assert (info.domain, info.reason) == (ERROR_DOMAIN, cls.reason)
        assert type(error_from_rpc(_WithoutOlderTrailer(rpc_error), "target")) is cls


def test_an_unreachable_registry_is_a_registry_error(make_server, snapshot_dir, trained):
    with running_redis_server() as redis_server:
        server = make_server(snapshot_dir, redis_url=redis_server.url)
    # Redis is gone: a version the server never saw can only be looked up there.
    with grpc.insecure_channel(server.address) as channel:
        rpc_error = _failure(lambda: pb_grpc.LogitServiceStub(channel).GetVersion(pb.GetVersionRequest(policy_version=9), timeout=60))
    info = _error_info(rpc_error)
    assert (info.domain, info.reason, info.metadata["retryable"]) == (ERROR_DOMAIN, "REGISTRY_ERROR", "true")
    mapped = error_from_rpc(_WithoutOlderTrailer(rpc_error), "target")
    assert type(mapped) is errors.RegistryError and mapped.retryable


# Classes no test above provokes from a real server, and why: each class is either here or above.
NOT_PROVOKED = {
    # The error hierarchy's root; the server raises only its subclasses.
    errors.LogitServiceError: "base class",
    # Needs a server bound by file modes: test_state_survives runs one as another user (root here).
    errors.SnapshotUnreadable: "needs a server that may not read a file",
    # The server raises it once the caller's deadline has passed, so gRPC's own DEADLINE_EXCEEDED, which
    # carries no rich status, reaches the caller first; the client maps it by code.
    errors.DeadlineExceeded: "gRPC answers for the server",
    # Raised by the client for a target it cannot reach (gRPC's own UNAVAILABLE); the server never does.
    errors.ServiceUnavailable: "client side only",
    # The class of a CANCELLED that gRPC itself sends (a call caught in a server's shutdown); no handler of
    # the service raises it, and the client names it by the status and its missing local reason.
    errors.CancelledByServer: "client side only",
}


def test_every_error_class_is_provoked_over_the_wire_or_said_why_not():
    provoked = {case.error for case in CASES.values()} | {
        errors.VersionConflict, errors.NonFiniteLogprobs, errors.SnapshotCorrupt, errors.RegistryError,
    }
    assert provoked.isdisjoint(NOT_PROVOKED)
    assert provoked | set(NOT_PROVOKED) == set(errors.error_classes().values())

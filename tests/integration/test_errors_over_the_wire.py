"""Every error reaches the client with the right gRPC status, and nothing stored is harmed by it."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from logit_client import LogitClient, SequenceInput
from logit_service import errors
from logit_service.snapshots.writer import write_snapshot
from logit_service.v1 import logit_service_pb2 as pb
from logit_service.v1 import logit_service_pb2_grpc as pb_grpc
from tests.helpers import VOCAB, random_tokens


@pytest.fixture
def server(make_server, snapshot_dir, trained):
    server = make_server(snapshot_dir, retention_window=2, cache_bytes=0)
    for version in range(4):  # window K=2 keeps versions 2 and 3
        path = trained.write(snapshot_dir, version)
        with LogitClient(server.address) as client:
            client.publish_version(version, str(path))
    return server


@pytest.fixture
def stub(server):
    channel = grpc.insecure_channel(server.address)
    yield pb_grpc.LogitServiceStub(channel)
    channel.close()


def _request(tokens: np.ndarray, *spans: tuple[int, int, int]) -> pb.ScoreRequest:
    return pb.ScoreRequest(
        sequences=[
            pb.Sequence(
                token_ids=tokens.astype("<i4").tobytes(),
                spans=[pb.VersionSpan(policy_version=v, start=s, end=e) for v, s, e in spans],
            )
        ]
    )


def _status(stub, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        stub.Score(request, timeout=30)
    return info.value.code(), info.value.details()


TOKENS = random_tokens(20, seed=0)
OUT_OF_VOCAB = TOKENS.copy()
OUT_OF_VOCAB[5] = VOCAB


@pytest.mark.parametrize(
    "request_, fragment",
    [
        pytest.param(_request(OUT_OF_VOCAB, (3, 1, 20)), "outside the vocabulary", id="token id out of vocabulary"),
        pytest.param(_request(TOKENS, (3, 1, 21)), "out of range", id="span past the end"),
        pytest.param(_request(TOKENS, (3, 0, 5)), "out of range", id="span scoring position 0"),
        pytest.param(_request(TOKENS, (3, 6, 6)), "out of range", id="empty span"),
        pytest.param(_request(TOKENS, (3, 1, 10), (2, 8, 12)), "overlaps", id="overlapping spans"),
        pytest.param(pb.ScoreRequest(), "no sequences", id="empty request"),
        pytest.param(_request(TOKENS), "no spans", id="sequence without spans"),
        pytest.param(_request(TOKENS[:1], (3, 1, 1)), "at least 2", id="one-token sequence"),
        pytest.param(
            pb.ScoreRequest(sequences=[pb.Sequence(token_ids=b"\x01\x02\x03", spans=[pb.VersionSpan(policy_version=3, start=1, end=2)])]),
            "multiple of 4",
            id="torn int32 payload",
        ),
        pytest.param(pb.ScoreRequest(temperature=-1.0, sequences=_request(TOKENS, (3, 1, 5)).sequences), "temperature", id="negative temperature"),
    ],
)
def test_invalid_argument(stub, request_, fragment):
    code, details = _status(stub, request_)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in details


def test_not_found_for_a_version_never_published(stub):
    code, details = _status(stub, _request(TOKENS, (7, 1, 20)))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "never published" in details and "latest is 3" in details


def test_failed_precondition_names_the_window(stub):
    code, details = _status(stub, _request(TOKENS, (1, 1, 20)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "[2, 3]" in details and "K=2" in details


def test_data_loss_for_a_corrupted_snapshot_and_other_versions_still_served(server, stub, snapshot_dir, trained):
    reference_v2 = stub.Score(_request(TOKENS, (2, 1, 20)), timeout=30).results[0].logprobs
    weights = snapshot_dir / "v00000003" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # one flipped bit pattern inside the tensor bytes
    weights.write_bytes(bytes(data))
    code, details = _status(stub, _request(TOKENS, (3, 1, 20)))
    assert code == grpc.StatusCode.DATA_LOSS
    assert "sha256" in details
    assert stub.Score(_request(TOKENS, (2, 1, 20)), timeout=30).results[0].logprobs == reference_v2


def test_publishing_a_corrupted_snapshot_is_refused_and_not_registered(server, snapshot_dir, trained):
    path = trained.write(snapshot_dir, 4)
    (path / "config.json").write_text((path / "config.json").read_text().replace("512", "513", 1) + " ")
    with LogitClient(server.address) as client:
        with pytest.raises(errors.SnapshotCorrupt):
            client.publish_version(4, str(path))
        assert client.list_versions().latest_version == 3
        with pytest.raises(errors.VersionNotFound):
            client.get_version(4)


def test_publishing_other_weights_under_a_taken_version_is_refused(server, snapshot_dir, trained, tmp_path):
    (snapshot_dir / "v00000003").rename(tmp_path / "v00000003-published")
    other = write_snapshot(snapshot_dir, 3, trained.states[0], trained.config)  # other weights, same name
    with LogitClient(server.address) as client:
        before = client.get_version(3)
        with pytest.raises(errors.VersionConflict):
            client.publish_version(3, str(other))
        assert client.get_version(3).digest == before.digest


def test_typed_errors_reach_the_client(server):
    with LogitClient(server.address) as client:
        with pytest.raises(errors.VersionOutsideWindow):
            client.score([SequenceInput(TOKENS, spans=((0, 1, 20),))])
        with pytest.raises(errors.VersionNotFound):
            client.score([SequenceInput(TOKENS, spans=((9, 1, 20),))])
        with pytest.raises(errors.InvalidRequest):
            client.score([SequenceInput(OUT_OF_VOCAB, spans=((3, 1, 20),))])


def test_request_limits_answer_resource_exhausted(make_server, snapshot_dir, trained):
    server = make_server(snapshot_dir, max_tokens_per_request=64, max_sequences_per_request=2)
    with LogitClient(server.address) as client:
        client.publish(0, trained.states[0], snapshot_dir, model_config=trained.config)
        with pytest.raises(errors.LogitServiceError) as info:
            client.score([SequenceInput(random_tokens(65, 1), spans=((0, 1, 65),))])
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit of 64" in info.value.message
        with pytest.raises(errors.LogitServiceError) as info:
            client.score([SequenceInput(TOKENS[:4], spans=((0, 1, 4),))] * 3)
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_deadline_too_short_to_reach_the_server_leaves_it_healthy(stub):
    """A 1 ms deadline usually expires in the client, so this proves only the status the caller sees and
    that the server answers the next call; that the server itself stops work at a deadline is shown in
    tests/integration/test_deadlines.py."""
    long = random_tokens(2000, seed=5) % VOCAB
    with pytest.raises(grpc.RpcError) as info:
        stub.Score(_request(long, (3, 1, 2000), ), timeout=0.001)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # the server is still healthy and answers the next request
    assert stub.Score(_request(TOKENS, (3, 1, 20)), timeout=30).results[0].logprobs


def test_publishing_from_outside_the_snapshot_directory_is_refused(server, trained, tmp_path):
    outside = write_snapshot(tmp_path / "elsewhere", 4, trained.states[0], trained.config)
    with LogitClient(server.address) as client:
        with pytest.raises(errors.InvalidRequest, match="outside this server's snapshot directory"):
            client.publish_version(4, str(outside))
        with pytest.raises(errors.VersionNotFound):
            client.get_version(4)

"""The service's surface beyond scoring: health, reflection, listing, the asyncio client, bf16 numerics."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from logit_client import AsyncLogitClient, LogitClient, SequenceInput
from logit_client.retry import error_from_rpc
from logit_service import errors
from logit_service.server.app import SERVICE_NAME
from logit_service.server.validation import MAX_VERSIONS_PER_CALL
from logit_service.v1 import logit_service_pb2 as pb
from logit_service.v1 import logit_service_pb2_grpc
from tests.helpers import random_tokens


@pytest.fixture
def server(make_server, snapshot_dir, trained):
    server = make_server(snapshot_dir, retention_window=3)
    with LogitClient(server.address) as client:
        for version in range(3):
            client.publish(version, trained.states[version], snapshot_dir, model_config=trained.config)
    return server


def test_health_reports_serving_for_the_server_and_the_service(server):
    with grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE_NAME):
            assert stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(server):
    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names


def test_list_and_get_versions_describe_what_is_served(server, trained):
    with LogitClient(server.address) as client:
        listed = client.list_versions()
        got = client.get_version(1)
    assert [v.policy_version for v in listed.versions] == [0, 1, 2]
    assert listed.latest_version == 2 and listed.oldest_retained_version == 0 and listed.retention_window == 3
    assert got.digest == listed.versions[1].digest and got.state == "retained" and got.dtype == "float32"


def test_publishing_the_same_snapshot_again_is_idempotent(server, snapshot_dir, trained):
    with LogitClient(server.address) as client:
        again = client.publish(1, trained.states[1], snapshot_dir, model_config=trained.config)
        assert again.already_published
        assert again.digest == client.get_version(1).digest


def test_asyncio_client_scores_concurrently_and_matches_the_sync_client(server, trained):
    sequences = [SequenceInput(random_tokens(20 + i, seed=i), spans=((i % 3, 1, 20 + i),), sample_id=str(i)) for i in range(6)]

    async def run():
        async with AsyncLogitClient(server.address, timeout_s=60) as client:
            return await asyncio.gather(*(client.score([s]) for s in sequences))

    results = asyncio.run(run())
    with LogitClient(server.address) as client:
        sync = client.score(sequences)
    for i, result in enumerate(results):
        assert result.sequences[0].sample_id == str(i)
        assert np.array_equal(result.sequences[0].logprobs, sync.sequences[i].logprobs, equal_nan=True)


def test_bfloat16_forward_keeps_a_float32_normaliser(make_server, snapshot_dir, trained):
    server = make_server(snapshot_dir, dtype="bfloat16")
    tokens = random_tokens(40, seed=9)
    with LogitClient(server.address) as client:
        client.publish(2, trained.states[2], snapshot_dir, model_config=trained.config)
        result = client.score([SequenceInput(tokens, spans=((2, 1, 40),))])
    assert result.dtype == "bfloat16"
    error = np.abs(result.sequences[0].logprobs[1:] - trained.reference(2, tokens)[1:]).max()
    # bf16 weights and activations move log-probs by ~1e-2 (bf16 keeps 8 significant bits); far from exact, far from wrong
    assert 1e-6 < error < 0.1


def test_a_configured_bearer_token_is_required_but_probes_stay_open(make_server, snapshot_dir, trained):
    from logit_service import errors

    token = "s3cret-token-of-some-length"
    server = make_server(snapshot_dir, auth_token=token)
    with LogitClient(server.address, auth_token=token) as client:
        client.publish(0, trained.states[0], snapshot_dir, model_config=trained.config)
        assert client.score([SequenceInput(random_tokens(10, 1), spans=((0, 1, 10),))]).tokens_scored == 9
    for wrong in (None, "s3cret-token-of-some-lengtH"):
        with LogitClient(server.address, auth_token=wrong) as client:
            with pytest.raises(errors.Unauthenticated):
                client.list_versions()
            assert client.health()  # health stays open for orchestrators' probes


def _stub(channel: grpc.Channel) -> logit_service_pb2_grpc.LogitServiceStub:
    return logit_service_pb2_grpc.LogitServiceStub(channel)


def test_every_score_answer_says_its_numerics(server):
    tokens = random_tokens(12, seed=6).astype("<i4")
    request = pb.ScoreRequest(
        sequences=[pb.Sequence(sample_id="n", token_ids=tokens.tobytes(), spans=[pb.VersionSpan(policy_version=2, start=1, end=12)])],
        temperature=1.0,
    )
    with grpc.insecure_channel(server.address) as channel:
        response = _stub(channel).Score(request, timeout=60)
    assert response.numerics == pb.NUMERICS_TRAINING  # the torch backend computes as training does


def test_a_lease_of_more_versions_than_one_call_may_name_is_refused_with_its_fields(server):
    count = MAX_VERSIONS_PER_CALL + 1
    request = pb.LeaseVersionsRequest(holder="rollout", policy_versions=list(range(count)), ttl_s=60)
    with grpc.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            _stub(channel).LeaseVersions(request, timeout=60)
    error = error_from_rpc(caught.value, server.address)
    assert isinstance(error, errors.RequestTooLarge)
    assert error.metadata == {
        "limit": "max_versions_per_call", "limit_value": str(MAX_VERSIONS_PER_CALL), "value": str(count),
    }  # fmt: skip


def test_submitted_segments_are_scored_and_serve_a_later_score(server, trained):
    tokens = random_tokens(30, seed=8)
    segment = SequenceInput(tokens, spans=((2, 1, 30),), sample_id="segmented")
    with LogitClient(server.address, timeout_s=60) as client:
        client.submit_segments([segment])
        client.barrier(2)
        seq = client.score([segment]).sequences[0]
    np.testing.assert_allclose(seq.logprobs[1:], trained.reference(2, tokens)[1:], rtol=0, atol=1e-5)

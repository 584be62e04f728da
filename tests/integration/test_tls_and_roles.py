"""TLS, mutual TLS and the reader/publisher roles, over the real wire with certificates the test makes."""

from __future__ import annotations

import grpc
import pytest

from logit_client import LogitClient, SequenceInput, tls_credentials
from logit_service import errors
from tests.certs import make_pki
from logit_service.v1 import logit_service_pb2 as pb
from tests.helpers import random_tokens

PUBLISHER = "publisher-token-0123456789abcdef"
READER = "reader-token-0123456789abcdefgh"


@pytest.fixture
def pki(tmp_path):
    directory = tmp_path / "pki"
    directory.mkdir()
    return make_pki(directory)


def _score(client: LogitClient, version: int = 0):
    tokens = random_tokens(12, seed=4)
    return client.score([SequenceInput(tokens, spans=((version, 1, 12),))]).sequences[0]


def test_tls_serves_a_client_that_trusts_the_ca_and_refuses_plaintext(make_server, snapshot_dir, trained, pki):
    server = make_server(snapshot_dir, tls_cert_file=pki.server_cert, tls_key_file=pki.server_key)
    with LogitClient(server.address, credentials=tls_credentials(str(pki.ca))) as client:
        client.publish(0, trained.states[0], snapshot_dir, model_config=trained.config)
        assert len(_score(client).logprobs) == 12
    with LogitClient(server.address, timeout_s=3, max_retries=0) as plaintext:
        with pytest.raises(errors.LogitServiceError) as info:
            plaintext.list_versions()
        assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_needs_a_client_certificate(make_server, snapshot_dir, trained, pki):
    server = make_server(
        snapshot_dir, tls_cert_file=pki.server_cert, tls_key_file=pki.server_key, tls_client_ca_file=pki.ca
    )
    with LogitClient(server.address, timeout_s=3, max_retries=0, credentials=tls_credentials(str(pki.ca))) as anonymous:
        with pytest.raises(errors.LogitServiceError) as info:
            anonymous.list_versions()
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
    credentials = tls_credentials(str(pki.ca), str(pki.client_cert), str(pki.client_key))
    with LogitClient(server.address, credentials=credentials) as client:
        client.publish(0, trained.states[0], snapshot_dir, model_config=trained.config)
        assert len(_score(client).logprobs) == 12


@pytest.fixture
def roles_server(make_server, snapshot_dir, trained, tmp_path):
    readers = tmp_path / "readers"
    readers.write_text(f"# mounted secret\n{READER}\n\n")
    server = make_server(snapshot_dir, auth_token=PUBLISHER, reader_token_file=readers)
    with LogitClient(server.address, auth_token=PUBLISHER) as client:
        client.publish(0, trained.states[0], snapshot_dir, model_config=trained.config)
    return server


def test_a_reader_scores_and_reads_but_may_not_change_anything(roles_server, snapshot_dir, trained):
    with LogitClient(roles_server.address, auth_token=READER) as reader:
        assert len(_score(reader).logprobs) == 12
        assert [v.policy_version for v in reader.list_versions().versions] == [0]
        with pytest.raises(errors.PermissionDenied, match="publisher role"):
            reader.publish(1, trained.states[1], snapshot_dir, model_config=trained.config)
        with pytest.raises(errors.PermissionDenied):
            reader.lease_versions([0], holder="rollout-1", ttl_s=60)
        with pytest.raises(errors.PermissionDenied):
            reader.submit_segments([SequenceInput(random_tokens(8, seed=1), spans=((0, 1, 8),))])


@pytest.mark.parametrize(
    "metadata, code",
    [
        pytest.param((("authorization", f"bearer {READER}"),), None, id="scheme name in lower case is accepted"),
        pytest.param((("authorization", f"Bearer {READER}"), ("authorization", f"Bearer {PUBLISHER}")),
                     grpc.StatusCode.UNAUTHENTICATED, id="two authorization headers are refused"),
        pytest.param((("authorization", f"Basic {READER}"),), grpc.StatusCode.UNAUTHENTICATED, id="another scheme"),
        pytest.param((("authorization", f"Bearer {READER.upper()}"),), grpc.StatusCode.UNAUTHENTICATED,
                     id="the token itself is case-sensitive"),
    ],
)  # fmt: skip
def test_authorization_headers_are_parsed_strictly(roles_server, metadata, code):
    with LogitClient(roles_server.address, metadata=metadata, max_retries=0) as client:
        if code is None:
            assert len(_score(client).logprobs) == 12
        else:
            with pytest.raises(errors.LogitServiceError) as info:
                _score(client)
            assert info.value.code == code


_SERVICE = pb.DESCRIPTOR.services_by_name["LogitService"]
_PUBLISHER_ONLY = {"PublishVersion", "UploadVersion", "LeaseVersions", "SubmitSegments", "Barrier"}


def _call(channel: grpc.Channel, method, metadata=()) -> grpc.StatusCode:
    """The status of one call to `method` with an empty request (the roles are checked before it is read)."""
    request_class = getattr(pb, method.input_type.name)
    kind = ("stream" if method.client_streaming else "unary") + "_" + ("stream" if method.server_streaming else "unary")
    call = getattr(channel, kind)(
        f"/{_SERVICE.full_name}/{method.name}", request_serializer=request_class.SerializeToString,
        response_deserializer=None,
    )  # fmt: skip
    request = iter([request_class()]) if method.client_streaming else request_class()
    try:
        response = call(request, timeout=30, metadata=metadata)
        if method.server_streaming:
            list(response)
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("method", list(_SERVICE.methods), ids=lambda m: m.name)
def test_every_method_needs_a_token_and_publishing_ones_the_publishers(roles_server, method):
    """Taken from the proto, so an RPC added later is covered too."""
    with grpc.insecure_channel(roles_server.address) as channel:
        assert _call(channel, method) == grpc.StatusCode.UNAUTHENTICATED
        assert _call(channel, method, (("authorization", "Bearer not-a-token-of-this-server"),)) == grpc.StatusCode.UNAUTHENTICATED
        as_reader = _call(channel, method, (("authorization", f"Bearer {READER}"),))
        as_publisher = _call(channel, method, (("authorization", f"Bearer {PUBLISHER}"),))
    refusals = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
    if method.name in _PUBLISHER_ONLY:
        assert as_reader == grpc.StatusCode.PERMISSION_DENIED
    else:
        assert as_reader not in refusals
    assert as_publisher not in refusals

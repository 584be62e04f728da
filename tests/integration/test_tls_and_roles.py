"""TLS, mutual TLS and the reader/publisher roles, over the real wire with certificates the test makes."""

from __future__ import annotations

import grpc
import pytest

from logit_client import LogitClient, SequenceInput, tls_credentials
from logit_service import errors
from tests.certs import make_pki
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

"""The README's grpcurl request, sent as grpcurl sends it (JSON → proto), gets the client's own answer."""

from __future__ import annotations

import base64
import json

import grpc
import numpy as np
from google.protobuf import json_format

from logit_client import LogitClient, SequenceInput
from logit_service.v1 import logit_service_pb2 as pb
from logit_service.v1 import logit_service_pb2_grpc as pb_grpc
from tests.readme_examples import grpcurl_example


def test_the_readme_request_is_answered_like_the_python_clients(make_server, snapshot_dir, trained):
    example = grpcurl_example()
    server = make_server(snapshot_dir)
    with LogitClient(server.address) as client:
        client.publish(0, trained.states[0], snapshot_dir, model_config=trained.config)
        expected = client.score([SequenceInput(example["token_ids"], spans=((0, 1, len(example["token_ids"])),))])

    request = json_format.Parse(json.dumps(example["request_json"]), pb.ScoreRequest())
    with grpc.insecure_channel(server.address) as channel:
        response = pb_grpc.LogitServiceStub(channel).Score(request, timeout=60)
    # What `grpcurl -emit-defaults` prints: every field, defaults included.
    answer = json_format.MessageToDict(response, always_print_fields_with_no_presence=True)

    (result,) = answer["results"]
    logprobs = np.frombuffer(base64.b64decode(result["logprobs"]), "<f4")
    sources = np.frombuffer(base64.b64decode(result["sources"]), np.uint8)
    assert logprobs.tolist() == expected.sequences[0].logprobs[1:].tolist()
    assert sources.tolist() == [pb.TOKEN_SOURCE_EXACT] * 4
    (span,) = result["spans"]
    assert span["servedVersion"] == "0" and span["requestedVersion"] == "0"  # printed only with -emit-defaults
    assert span["source"] == "TOKEN_SOURCE_EXACT"

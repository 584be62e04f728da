"""The README's grpcurl request is valid JSON for the proto's ScoreRequest and says what its snippet says."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import numpy as np
from google.protobuf import json_format

from logit_service.v1 import logit_service_pb2 as pb
from tests.readme_examples import grpcurl_example


def test_the_request_parses_with_the_protos_json_mapping():
    example = grpcurl_example()

    request = json_format.Parse(json.dumps(example["request_json"]), pb.ScoreRequest())

    (sequence,) = request.sequences
    assert sequence.sample_id == "s0"
    assert np.frombuffer(sequence.token_ids, "<i4").tolist() == example["token_ids"]
    assert [(s.policy_version, s.start, s.end) for s in sequence.spans] == [(0, 1, len(example["token_ids"]))]
    assert request.temperature == 1.0


def test_the_base64_is_what_the_snippet_prints():
    example = grpcurl_example()
    snippet = (
        "import base64, numpy as np; "
        f"print(base64.b64encode(np.array({example['token_ids']}, '<i4').tobytes()).decode())"
    )

    printed = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, check=True, timeout=60)

    assert printed.stdout.strip() == example["printed_base64"]
    assert example["request_json"]["sequences"][0]["tokenIds"] == example["printed_base64"]
    assert base64.b64decode(example["printed_base64"]) == np.array(example["token_ids"], "<i4").tobytes()


def test_the_method_is_the_services_score():
    example = grpcurl_example()

    service = pb.DESCRIPTOR.services_by_name["LogitService"]
    assert example["method"] == f"{service.full_name}/Score"
    assert example["target"] == "127.0.0.1:50051"

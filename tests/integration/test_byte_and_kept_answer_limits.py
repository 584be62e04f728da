"""Two limits the README promises, each shown to bite over the real wire: the message-byte limit
(`--max-message-bytes`) and the token budget of kept answers (`--segment-cache-tokens`, LRU)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from logit_client import LogitClient, SequenceInput, TokenSource
from logit_service import errors
from logit_service.v1 import logit_service_pb2 as pb
from logit_service.v1 import logit_service_pb2_grpc as pb_grpc
from tests.helpers import random_tokens

MiB = 1 << 20


def test_the_message_byte_limit_is_the_configured_one(make_server, snapshot_dir):
    # 6 MiB, above gRPC's own 4 MiB default, so a server that dropped the setting refuses the 5 MiB
    # request too, and one without any limit accepts the 6 MiB one. The token limit is set above both
    # requests' tokens and neither has spans: whatever is read is refused INVALID_ARGUMENT, so
    # RESOURCE_EXHAUSTED can only come from the byte limit.
    server = make_server(snapshot_dir, max_message_bytes=6 * MiB, max_tokens_per_request=4 * MiB)
    ids = np.zeros(6 * MiB // 4 + 1024, dtype="<i4").tobytes()
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.LogitServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Score(pb.ScoreRequest(sequences=[pb.Sequence(token_ids=ids)]), timeout=60)  # 6 MiB + 4 KiB
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
        with pytest.raises(grpc.RpcError) as info:  # 5 MiB: under the limit, read and judged
            stub.Score(pb.ScoreRequest(sequences=[pb.Sequence(token_ids=ids[: 5 * MiB])]), timeout=60)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()


TRAJECTORY = random_tokens(40, seed=57)


def _segment(sample_id: str, end: int = 20) -> SequenceInput:
    return SequenceInput(TRAJECTORY[:end], spans=((0, 8, end),), sample_id=sample_id)


def test_kept_answers_stay_within_their_token_budget_least_recently_used_first(make_server, snapshot_dir, trained):
    # Budget 24 tokens; each kept span is 12: two fit, a third drops the least recently used one.
    server = make_server(snapshot_dir, retention_window=1, segment_cache_tokens=24)
    with LogitClient(server.address, timeout_s=60) as client:
        client.publish(0, trained.states[0], snapshot_dir, model_config=trained.config)
        client.submit_segments([_segment("a"), _segment("b")])
        assert client.barrier(0) == 0
        client.score([_segment("a")])  # "a" is now the more recently used
        client.submit_segments([_segment("c")])
        assert client.barrier(0) == 0
        client.publish(1, trained.states[1], snapshot_dir, model_config=trained.config)  # K=1: v0 evicted

        expected = trained.reference(0, TRAJECTORY)[8:20]
        for kept in ("a", "c"):
            seq = client.score([_segment(kept)]).sequences[0]
            assert (seq.sources[8:20] == TokenSource.EXACT).all()
            np.testing.assert_allclose(seq.logprobs[8:20], expected, atol=2e-6, rtol=0)
        with pytest.raises(errors.VersionOutsideWindow):  # "b" was dropped for the budget
            client.score([_segment("b")])


def test_a_span_longer_than_the_whole_budget_is_not_kept_and_evicts_nothing(make_server, snapshot_dir, trained):
    server = make_server(snapshot_dir, retention_window=1, segment_cache_tokens=12)
    with LogitClient(server.address, timeout_s=60) as client:
        client.publish(0, trained.states[0], snapshot_dir, model_config=trained.config)
        client.submit_segments([_segment("fits")])  # 12 scored tokens: the whole budget
        assert client.barrier(0) == 0
        client.submit_segments([_segment("long", end=21)])  # 13 > 12: never kept
        assert client.barrier(0) == 0
        client.publish(1, trained.states[1], snapshot_dir, model_config=trained.config)
        seq = client.score([_segment("fits")]).sequences[0]  # not pushed out by the answer too large to keep
        assert (seq.sources[8:20] == TokenSource.EXACT).all()
        with pytest.raises(errors.VersionOutsideWindow):
            client.score([_segment("long", end=21)])

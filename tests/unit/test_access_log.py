"""The access log on its own, in front of handlers that decode their requests themselves: which request
id and versions it logs, how it writes them, and what it counts; over real gRPC on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import re

import grpc

from logit_service.server.access_log import AccessLogInterceptor
from logit_service.server.metrics import ServiceMetrics
from logit_service.v1 import logit_service_pb2 as pb
from tests.inprocess_grpc import method, serving

WAIT_S = 30
LOGGER = "logit_service.access"


async def _score(request: pb.ScoreRequest, context) -> pb.ScoreResponse:
    # One answer span per requested span, its source the span's version modulo 4 (0 is no known source).
    results = [
        pb.SequenceResult(
            sample_id=seq.sample_id,
            spans=[pb.SpanResult(start=s.start, end=s.end, source=s.policy_version % 4) for s in seq.spans],
        )
        for seq in request.sequences
    ]
    return pb.ScoreResponse(results=results, tokens_scored=sum(s.end - s.start for r in results for s in r.spans))


async def _get_version(request: pb.GetVersionRequest, context) -> pb.VersionInfo:
    return pb.VersionInfo(policy_version=request.policy_version)


HANDLERS = {
    "Score": grpc.unary_unary_rpc_method_handler(
        _score, request_deserializer=pb.ScoreRequest.FromString, response_serializer=pb.ScoreResponse.SerializeToString
    ),
    "GetVersion": grpc.unary_unary_rpc_method_handler(
        _get_version, request_deserializer=pb.GetVersionRequest.FromString,
        response_serializer=pb.VersionInfo.SerializeToString,
    ),  # fmt: skip
}


def _score_request(versions, request_id: str = "") -> pb.ScoreRequest:
    spans = [pb.VersionSpan(policy_version=v, start=1 + 2 * i, end=3 + 2 * i) for i, v in enumerate(versions)]
    return pb.ScoreRequest(
        sequences=[pb.Sequence(sample_id="s", token_ids=bytes(4 * (2 * len(versions) + 1)), spans=spans)],
        request_id=request_id,
    )


async def _call(channel, name: str, request, response_type, metadata=()):
    call = channel.unary_unary(method(name), request_serializer=type(request).SerializeToString,
                               response_deserializer=response_type.FromString)  # fmt: skip
    return await call(request, metadata=metadata, timeout=WAIT_S)


def _entries(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


async def test_the_request_is_read_as_the_handler_decoded_it(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with serving([AccessLogInterceptor(ServiceMetrics(), log_format="json")], HANDLERS) as channel:
        answer = await _call(channel, "Score", _score_request((7, 3), request_id="req-42"), pb.ScoreResponse)
    assert answer.tokens_scored == 4  # the handler got the decoded request, not its bytes
    (entry,) = [json.loads(m) for m in _entries(caplog)]
    assert (entry["request_id"], entry["method"], entry["status"], entry["versions"], entry["tokens"]) == (
        "req-42", "Score", "OK", [3, 7], 4
    )


async def test_the_request_id_comes_from_the_request_then_the_metadata_else_is_made_up(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with serving([AccessLogInterceptor(ServiceMetrics(), log_format="json")], HANDLERS) as channel:
        await _call(channel, "GetVersion", pb.GetVersionRequest(policy_version=5), pb.VersionInfo,
                    metadata=(("x-request-id", "from-metadata"),))  # fmt: skip
        await _call(channel, "GetVersion", pb.GetVersionRequest(policy_version=5), pb.VersionInfo)
        await _call(channel, "Score", _score_request((1,), request_id="r" * 100), pb.ScoreResponse,
                    metadata=(("x-request-id", "ignored"),))  # fmt: skip
    from_metadata, made_up, long_one = [json.loads(m) for m in _entries(caplog)]
    assert from_metadata["request_id"] == "from-metadata" and from_metadata["versions"] == [5]
    assert re.fullmatch("[0-9a-f]{16}", made_up["request_id"])
    assert long_one["request_id"] == "r" * 64  # cut: a caller cannot make log lines of any length


async def test_at_most_sixteen_versions_are_logged(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with serving([AccessLogInterceptor(ServiceMetrics(), log_format="json")], HANDLERS) as channel:
        await _call(channel, "Score", _score_request(range(16)), pb.ScoreResponse)
        await _call(channel, "Score", _score_request(range(17)), pb.ScoreResponse)
    sixteen, seventeen = [json.loads(m)["versions"] for m in _entries(caplog)]
    assert sixteen == list(range(16))
    assert seventeen == list(range(16)) + ["..."]


async def test_the_text_format_is_one_line_of_key_value_pairs(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with serving([AccessLogInterceptor(ServiceMetrics(), log_format="text")], HANDLERS) as channel:
        await _call(channel, "Score", _score_request((2, 9), request_id="t-1"), pb.ScoreResponse)
    (line,) = _entries(caplog)
    assert re.fullmatch(r"request_id=t-1 method=Score status=OK tokens=4 versions=2,9 duration_ms=[0-9.]+ peer=\S+", line)


async def test_tokens_are_counted_by_the_source_that_answered_them():
    metrics = ServiceMetrics()
    async with serving([AccessLogInterceptor(metrics, log_format="off")], HANDLERS) as channel:
        await _call(channel, "Score", _score_request((1, 2, 3, 4, 8)), pb.ScoreResponse)

    def tokens(route: str) -> float | None:
        return metrics.registry.get_sample_value("logit_service_tokens_scored_total", {"route": route})

    assert (tokens("exact"), tokens("ewma"), tokens("unavailable"), tokens("other")) == (2.0, 2.0, 2.0, 4.0)
    assert metrics.registry.get_sample_value("logit_service_calls_total", {"method": "Score", "code": "OK"}) == 1.0

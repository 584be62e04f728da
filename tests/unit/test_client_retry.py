"""The clients' retry, deadline, routing and error mapping against real gRPC servers on 127.0.0.1:0."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import logit_client
from logit_client import AsyncLogitClient, LogitClient, SequenceInput, TokenSource
from logit_client.publish import publish as publish_function
from logit_client.retry import (
    ERROR_CLASS_KEY,
    MAX_BACKOFF_S,
    MIN_ATTEMPT_S,
    Deadline,
    RetryPlan,
    error_from_rpc,
)
from logit_common import rich_status
from logit_service import errors
from logit_service.v1 import logit_service_pb2 as pb
from logit_service.v1 import logit_service_pb2_grpc as pb_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
SLACK_S = 2.0  # correctness bound on deadline overshoot, generous for loaded CI machines


class FakeServicer(pb_grpc.LogitServiceServicer):
    """Answers every RPC per `behaviour`: "ok", a grpc.StatusCode to abort with, or "hang" until released."""

    def __init__(self, behaviour: object = "ok") -> None:
        self.behaviour = behaviour
        self.calls: list[str] = []
        self.metadata: list[dict[str, str]] = []
        self.release = threading.Event()
        self._lock = threading.Lock()

    def _enter(self, method: str, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.calls.append(method)
            self.metadata.append(dict(context.invocation_metadata()))
        if self.behaviour == "hang":
            self.release.wait(timeout=30)
            context.abort(grpc.StatusCode.UNAVAILABLE, "released")
        if isinstance(self.behaviour, tuple):  # (code, error class name sent in trailing metadata)
            code, class_name = self.behaviour
            context.set_trailing_metadata(((ERROR_CLASS_KEY, class_name),))
            context.abort(code, f"fake {class_name}")
        if isinstance(self.behaviour, grpc.StatusCode):
            context.abort(self.behaviour, f"fake {self.behaviour.name}")

    def ListVersions(self, request, context):
        self._enter("ListVersions", context)
        return pb.ListVersionsResponse(
            versions=[pb.VersionInfo(policy_version=7, digest="d7", state=pb.VERSION_STATE_RETAINED, resident=True)],
            latest_version=7,
            retention_window=4,
            oldest_retained_version=4,
        )

    def GetVersion(self, request, context):
        self._enter("GetVersion", context)
        return pb.VersionInfo(policy_version=request.policy_version, state=pb.VERSION_STATE_EVICTED)

    def PublishVersion(self, request, context):
        self._enter("PublishVersion", context)
        info = pb.VersionInfo(policy_version=request.policy_version, snapshot_path=request.snapshot_path)
        return pb.PublishVersionResponse(version=info, already_published=False)

    def Score(self, request, context):
        """Scores every requested position as -(position / 10), exactly, in request span order."""
        self._enter("Score", context)
        response = pb.ScoreResponse(backend="fake", dtype="float32")
        for seq in request.sequences:
            positions = [t for span in seq.spans for t in range(span.start, span.end)]
            response.results.add(
                sample_id=seq.sample_id,
                logprobs=(-np.asarray(positions, dtype="<f4") / 10).astype("<f4").tobytes(),
                sources=bytes([pb.TOKEN_SOURCE_EXACT] * len(positions)),
                spans=[
                    pb.SpanResult(requested_version=s.policy_version, served_version=s.policy_version,
                                  start=s.start, end=s.end, source=pb.TOKEN_SOURCE_EXACT)
                    for s in seq.spans
                ],
            )
            response.tokens_scored += len(positions)
        return response


@pytest.fixture
def start_server():
    """Starts real servers on 127.0.0.1:0; returns (target, servicer) and stops them all at teardown."""
    started: list[tuple[grpc.Server, FakeServicer]] = []

    def start(behaviour: object = "ok", *, with_health: bool = False) -> tuple[str, FakeServicer]:
        servicer = FakeServicer(behaviour)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_LogitServiceServicer_to_server(servicer, server)
        if with_health:
            health_servicer = health.HealthServicer()
            health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
            health_servicer.set("logit_service.v1.LogitService", health_pb2.HealthCheckResponse.NOT_SERVING)
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        started.append((server, servicer))
        return f"127.0.0.1:{port}", servicer

    yield start
    for server, servicer in started:
        servicer.release.set()
        server.stop(grace=None)


def test_unavailable_is_retried_on_the_next_target(start_server):
    down, down_servicer = start_server(grpc.StatusCode.UNAVAILABLE)
    up, up_servicer = start_server()
    with LogitClient([down, up], timeout_s=10, metadata=[("x-trainer", "t0")]) as client:
        versions = client.list_versions()
    assert down_servicer.calls == ["ListVersions"]
    assert up_servicer.calls == ["ListVersions"]
    assert up_servicer.metadata[0]["x-trainer"] == "t0"
    assert versions.latest_version == 7 and versions.oldest_retained_version == 4
    assert versions.versions[0].state == "retained" and versions.versions[0].resident
    assert versions.ewma is None


def test_retries_stop_after_max_retries(start_server):
    first, first_servicer = start_server(grpc.StatusCode.UNAVAILABLE)
    second, second_servicer = start_server(grpc.StatusCode.UNAVAILABLE)
    with LogitClient([first, second], timeout_s=10, max_retries=2, retry_backoff_s=0.001) as client:
        with pytest.raises(errors.ServiceUnavailable) as caught:
            client.list_versions()
    assert len(first_servicer.calls) == 2 and len(second_servicer.calls) == 1  # 1 attempt + 2 retries
    assert caught.value.retryable


def test_not_found_is_raised_without_retry(start_server):
    missing, missing_servicer = start_server(grpc.StatusCode.NOT_FOUND)
    other, other_servicer = start_server()
    with LogitClient([missing, other], timeout_s=10) as client:
        with pytest.raises(errors.VersionNotFound, match="fake NOT_FOUND"):
            client.get_version(3)
    assert missing_servicer.calls == ["GetVersion"]
    assert other_servicer.calls == []


def test_resource_exhausted_is_told_apart_by_the_error_class(start_server):
    big, big_servicer = start_server((grpc.StatusCode.RESOURCE_EXHAUSTED, "RequestTooLarge"))
    busy, busy_servicer = start_server(grpc.StatusCode.RESOURCE_EXHAUSTED)
    with LogitClient(big, timeout_s=10, max_retries=1, retry_backoff_s=0.001) as client:
        with pytest.raises(errors.RequestTooLarge):
            client.list_versions()
    with LogitClient(busy, timeout_s=10, max_retries=1, retry_backoff_s=0.001) as client:
        with pytest.raises(errors.Overloaded):  # no class named: the status decides, and Overloaded retries
            client.list_versions()
    assert big_servicer.calls == ["ListVersions"]
    assert busy_servicer.calls == ["ListVersions", "ListVersions"]


def test_oversized_message_is_not_retried(start_server):
    target, servicer = start_server()
    with LogitClient([target, target], max_message_bytes=1024, timeout_s=10) as client:
        with pytest.raises(errors.RequestTooLarge, match="larger than max"):
            client.score([SequenceInput(np.arange(1000), ((0, 1, 1000),))])
    assert servicer.calls == []


def test_deadline_is_one_budget_for_the_whole_call(start_server):
    slow, slow_servicer = start_server("hang")
    budget_s = 0.5
    with LogitClient([slow], timeout_s=30, max_retries=5) as client:
        started = time.monotonic()
        with pytest.raises(errors.DeadlineExceeded):
            client.list_versions(timeout_s=budget_s)
        elapsed_s = time.monotonic() - started
    assert budget_s * 0.9 <= elapsed_s < budget_s + SLACK_S
    assert slow_servicer.calls == ["ListVersions"]  # the budget was spent: no retry


def test_retries_never_extend_the_deadline(start_server):
    targets = [start_server(grpc.StatusCode.UNAVAILABLE)[0] for _ in range(2)]
    budget_s = 0.3
    with LogitClient(targets, timeout_s=budget_s, max_retries=10_000, retry_backoff_s=0.02) as client:
        started = time.monotonic()
        with pytest.raises(errors.ServiceUnavailable):
            client.list_versions()
        elapsed_s = time.monotonic() - started
    assert elapsed_s < budget_s + SLACK_S


def test_router_prefers_replicas_holding_the_version(start_server):
    cold, cold_servicer = start_server()
    warm, warm_servicer = start_server()
    asked: list[set[int]] = []

    def router(policy_versions: set[int]) -> list[str]:
        asked.append(policy_versions)
        return [warm]

    with LogitClient([cold, warm], router=router, timeout_s=10) as client:
        for _ in range(3):
            assert client.get_version(5).state == "evicted"
        client.list_versions()  # touches no version: round-robin, never asks the router
        client.list_versions()
    assert asked == [{5}, {5}, {5}]
    assert warm_servicer.calls.count("GetVersion") == 3 and "GetVersion" not in cold_servicer.calls
    assert cold_servicer.calls.count("ListVersions") == warm_servicer.calls.count("ListVersions") == 1


def test_score_round_trip_aligns_positions(start_server):
    target, servicer = start_server()
    sequences = [
        SequenceInput.from_versions([4, 5, 6, 7, 8], [-1, -1, 2, 2, 3], "s0"),
        SequenceInput(np.array([1, 2, 3]), ((2, 1, 3),), "s1"),
    ]
    with LogitClient(target) as client:
        result = client.score(sequences, request_id="req-1")
    np.testing.assert_allclose(result[0].logprobs, [np.nan, np.nan, -0.2, -0.3, -0.4], equal_nan=True)
    np.testing.assert_array_equal(result[0].served_versions, [-1, -1, 2, 2, 3])
    assert result.padded().shape == (2, 5)
    assert (result.padded_sources()[1] == [0, TokenSource.EXACT, TokenSource.EXACT, 0, 0]).all()
    assert result.tokens_scored == 5 and result.backend == "fake"


def test_health(start_server):
    target, _ = start_server(with_health=True)
    no_health, _ = start_server()
    with LogitClient([target, no_health], timeout_s=5) as client:
        assert client.health(target=target)
        assert not client.health("logit_service.v1.LogitService", target=target)
        assert not client.health("unknown.Service", target=target)
        assert not client.health(target=no_health)  # UNIMPLEMENTED: not a health-checked server


def test_publish_writes_then_registers(start_server, monkeypatch, tmp_path):
    import types

    written: list[tuple] = []

    def write_snapshot(root, policy_version, state_dict, model_config):
        written.append((policy_version, dict(state_dict), dict(model_config)))
        return Path(root) / f"v{policy_version:08d}"

    package = types.ModuleType("logit_common.snapshots")
    writer = types.ModuleType("logit_common.snapshots.writer")
    writer.write_snapshot = write_snapshot
    package.writer = writer
    monkeypatch.setitem(sys.modules, "logit_common.snapshots", package)
    monkeypatch.setitem(sys.modules, "logit_common.snapshots.writer", writer)
    # Nothing is written, so there is no manifest to take the digest from; the fake server registers "".
    # (That publish compares the two digests is tested against a real server and real files.)
    monkeypatch.setattr(sys.modules["logit_client.publish"], "_digest_of", lambda path: "")

    class Config:
        def to_dict(self):
            return {"model_type": "tiny"}

    class Module:
        config = Config()

        def state_dict(self):
            return {"w": 1}

    target, servicer = start_server()
    with LogitClient(target) as client:
        published = client.publish(3, Module(), tmp_path)
        with pytest.raises(ValueError, match="model_config"):
            client.publish(4, {"w": 1}, tmp_path)
    assert written == [(3, {"w": 1}, {"model_type": "tiny"})]
    assert published.policy_version == 3 and published.snapshot_path == "v00000003"  # relative to the server's snapshot dir
    assert servicer.calls == ["PublishVersion"]
    assert logit_client.publish is publish_function  # not shadowed by the submodule of the same name


@pytest.mark.asyncio
async def test_async_client_retries_and_maps_errors(start_server):
    down, down_servicer = start_server(grpc.StatusCode.UNAVAILABLE)
    up, up_servicer = start_server()
    async with AsyncLogitClient([down, up], timeout_s=10) as client:
        versions = await client.list_versions()
        assert versions.latest_version == 7
        result = await client.score([SequenceInput([1, 2, 3], ((0, 1, 3),))])
        np.testing.assert_allclose(result[0].logprobs, [np.nan, -0.1, -0.2], equal_nan=True)
    # The second call starts one step further in the rotation, on the healthy replica.
    assert down_servicer.calls == ["ListVersions"]
    assert up_servicer.calls == ["ListVersions", "Score"]

    slow, _ = start_server("hang")
    async with AsyncLogitClient(slow, max_retries=5) as client:
        started = time.monotonic()
        with pytest.raises(errors.DeadlineExceeded):
            await client.get_version(1, timeout_s=0.3)
        assert time.monotonic() - started < 0.3 + SLACK_S


def test_import_is_light():
    code = (
        "import sys, logit_client\n"
        "logit_client.LogitClient, logit_client.AsyncLogitClient, logit_client.publish, logit_client.VersionNotFound\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'vllm', 'ray'))\n"
        "server = sorted(m for m in sys.modules if m.startswith(('logit_service.server', 'logit_service.backends',"
        " 'logit_service.snapshots', 'logit_service.scaling', 'logit_service.registry')))\n"
        "print(heavy + server)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "clients"), str(REPO_ROOT)])}
    completed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


# The plan and the deadline on their own, on a clock the test moves by hand: what each attempt gets and
# when the plan gives up, exactly, without a server or real waiting.


class _Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("budget_s", [0.0, -1.0])
def test_deadline_refuses_a_budget_that_is_not_positive(budget_s):
    with pytest.raises(ValueError, match=f"^timeout_s must be > 0, got {budget_s}$"):
        Deadline(budget_s)


def test_deadline_counts_down_on_its_clock_and_stops_at_zero():
    clock = _Clock()
    deadline = Deadline(5.0, clock)
    assert deadline.budget_s == 5.0 and deadline.remaining() == 5.0
    clock.now += 3.0
    assert deadline.remaining() == 2.0
    clock.now += 3.0
    assert deadline.remaining() == 0.0


def _plan(clock, *, budget_s=10.0, targets=("a", "b"), max_retries=None, backoff_s=0.1, jitter=1.0, **kwargs):
    return RetryPlan(
        list(targets), Deadline(budget_s, clock), max_retries=max_retries, backoff_s=backoff_s,
        jitter=lambda: jitter, **kwargs,
    )  # fmt: skip


def test_retry_plan_refuses_no_targets():
    with pytest.raises(ValueError, match="^no target to send the call to$"):
        _plan(_Clock(), targets=())


def test_attempts_go_round_the_targets_with_the_remaining_budget():
    clock = _Clock()
    plan = _plan(clock, targets=("a", "b", "c"))
    assert plan.next_attempt() == ("a", 10.0)
    clock.now += 4.0
    assert plan.next_attempt() == ("b", 6.0)
    assert plan.next_attempt() == ("c", 6.0)
    assert plan.next_attempt() == ("a", 6.0)
    assert plan.attempts == 4


def test_backoff_doubles_up_to_its_cap_and_jitter_shortens_it_by_up_to_half():
    plan = _plan(_Clock(), budget_s=100.0, backoff_s=0.5, max_backoff_s=3.0)
    delays = []
    for _ in range(5):
        plan.next_attempt()
        delays.append(plan.backoff_after(errors.ServiceUnavailable("down")))
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0]
    half = _plan(_Clock(), backoff_s=0.5, jitter=0.0)
    half.next_attempt()
    assert half.backoff_after(errors.ServiceUnavailable("down")) == 0.25


def test_backoff_is_capped_at_two_seconds_by_default():
    plan = _plan(_Clock(), budget_s=1000.0, backoff_s=1.5)
    plan.next_attempt()
    plan.next_attempt()
    assert plan.backoff_after(errors.ServiceUnavailable("down")) == MAX_BACKOFF_S == 2.0


def test_an_error_that_is_not_retryable_is_raised_at_once():
    plan = _plan(_Clock())
    plan.next_attempt()
    assert plan.backoff_after(errors.VersionNotFound("no v3")) is None


@pytest.mark.parametrize(("max_retries", "retries"), [(0, 0), (2, 2), (None, 8)])
def test_max_retries_counts_the_attempts_after_the_first(max_retries, retries):
    plan = _plan(_Clock(), budget_s=1000.0, backoff_s=0.001, max_retries=max_retries)
    allowed = 0
    for _ in range(8):
        plan.next_attempt()
        if plan.backoff_after(errors.ServiceUnavailable("down")) is None:
            break
        allowed += 1
    assert allowed == retries


def test_no_retry_when_the_pause_would_leave_less_than_one_attempt_s_budget():
    # remaining - pause is exactly MIN_ATTEMPT_S (a clock at 0 keeps the budget exact, and 0.01 - 0.005 is
    # exact in binary floating point): still allowed.
    edge = _plan(_Clock(0.0), budget_s=0.01, backoff_s=MIN_ATTEMPT_S)
    assert edge.deadline.remaining() - MIN_ATTEMPT_S == MIN_ATTEMPT_S
    edge.next_attempt()
    assert edge.backoff_after(errors.ServiceUnavailable("down")) == MIN_ATTEMPT_S
    short = _plan(_Clock(), budget_s=0.01, backoff_s=0.006)
    short.next_attempt()
    assert short.backoff_after(errors.ServiceUnavailable("down")) is None


def _rpc_error(code, details="", trailing=()):
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details=details)


def test_error_from_rpc_trusts_a_class_trailer_that_agrees_with_the_status():
    error = error_from_rpc(
        _rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", [(ERROR_CLASS_KEY, "Overloaded")]), "t1"
    )
    assert type(error) is errors.Overloaded and error.retryable
    assert error.message == "busy" and error.target == "t1"


@pytest.mark.parametrize(
    "class_name",
    [
        pytest.param("VersionNotFound", id="a class of another status"),
        pytest.param("grpc", id="a name that is no class"),
        pytest.param("NoSuchError", id="an unknown name"),
    ],
)
def test_error_from_rpc_ignores_a_class_trailer_that_disagrees(class_name):
    error = error_from_rpc(_rpc_error(grpc.StatusCode.UNAVAILABLE, "down", [(ERROR_CLASS_KEY, class_name)]), "t")
    assert type(error) is errors.ServiceUnavailable


def test_error_from_rpc_reads_the_class_trailer_among_others():
    trailing = [("other-key", "RequestTooLarge"), (ERROR_CLASS_KEY, "RequestTooLarge")]
    error = error_from_rpc(_rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "too big", trailing), "t")
    assert type(error) is errors.RequestTooLarge and not error.retryable


def test_error_from_rpc_knows_grpcs_own_size_refusal():
    details = "Received message larger than max (5000 vs. 1024)"
    error = error_from_rpc(_rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, details), "t")
    assert type(error) is errors.RequestTooLarge and error.message == details
    busy = error_from_rpc(_rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full"), "t")
    assert type(busy) is errors.Overloaded


def test_error_from_rpc_names_the_status_when_there_are_no_details():
    error = error_from_rpc(_rpc_error(grpc.StatusCode.NOT_FOUND), "t")
    assert type(error) is errors.VersionNotFound and error.message == "NOT_FOUND"
    classed = error_from_rpc(_rpc_error(grpc.StatusCode.NOT_FOUND, "", [(ERROR_CLASS_KEY, "VersionNotFound")]), "t")
    assert classed.message == "NOT_FOUND"


def test_error_from_rpc_takes_the_rich_status_class_and_fields_but_not_retryable():
    sent = errors.RequestTooLarge("3 MiB is over the limit", limit="max_message_bytes", value="3145728")
    trailing = rich_status.trailing_metadata(sent)[:1]  # the rich status only, no older trailer
    error = error_from_rpc(_rpc_error(sent.code, sent.message, trailing), "t")
    assert type(error) is errors.RequestTooLarge
    assert error.metadata == {"limit": "max_message_bytes", "value": "3145728"}


def test_error_from_rpc_reads_a_bare_rpc_error_as_unknown():
    # grpc.RpcError itself has no code(), details() or trailing_metadata(): what the client sees when
    # gRPC raises its base class (e.g. a channel closed under a call).
    error = error_from_rpc(grpc.RpcError(), "t")
    assert type(error) is errors.LogitServiceError
    assert error.code == grpc.StatusCode.UNKNOWN and error.message == "UNKNOWN" and error.target == "t"


@pytest.mark.parametrize("details", ["", "Cancelled", "Received RST_STREAM with error code 8"])
def test_a_call_the_server_side_cancelled_is_retried_like_unavailable(details):
    # gRPC cancels a call that arrives as a server stops taking calls; it carries no answer and changed
    # nothing, so the client goes on to the next attempt (another replica, or this one restarted).
    error = error_from_rpc(_rpc_error(grpc.StatusCode.CANCELLED, details), "t")
    assert type(error) is errors.CancelledByServer and error.retryable and error.target == "t"


@pytest.mark.parametrize(
    "details",
    ["Locally cancelled by application!", "Exception iterating requests!", "Exception serializing request!",
     "Exception deserializing response!"],
)  # fmt: skip
def test_a_call_the_client_itself_cancelled_is_not_retried(details):
    error = error_from_rpc(_rpc_error(grpc.StatusCode.CANCELLED, details), "t")
    assert type(error) is errors.LogitServiceError and not error.retryable
    assert error.code == grpc.StatusCode.CANCELLED and error.message == details

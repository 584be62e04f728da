"""The bearer-token roles of logit_service.server.auth over a real gRPC connection in the test's process:
which methods need which role, how strictly the header is read, what a refused caller is told, and the
token file. The handlers behind the interceptor only count the calls that reach them."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from logit_service import errors
from logit_service.server.auth import Role, TokenAuthInterceptor, read_tokens, required_role
from logit_service.v1 import logit_service_pb2 as pb
from tests.inprocess_grpc import method, serving, status_of, unary

PUBLISHER = "publisher-token-0123456789abcdef"
READER = "reader-token-0123456789abcdefgh"
PUBLISHER_ONLY = ["PublishVersion", "UploadVersion", "LeaseVersions", "SubmitSegments", "Barrier"]
READABLE = ["Score", "GetVersion", "ListVersions", "FetchVersion"]


def test_every_method_of_the_service_has_its_role():
    names = {m.name for m in pb.DESCRIPTOR.services_by_name["LogitService"].methods}
    assert names == set(PUBLISHER_ONLY) | set(READABLE)  # a new method must be placed in one of the two
    assert {name: required_role(method(name)) for name in names} == {
        **{name: Role.PUBLISHER for name in PUBLISHER_ONLY}, **{name: Role.READER for name in READABLE}
    }


def test_probes_and_other_services_need_no_role():
    assert required_role("/grpc.health.v1.Health/Check") is None
    assert required_role("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") is None
    assert required_role("/other.v1.Service/PublishVersion") is None  # the name alone is not enough


def test_an_interceptor_without_tokens_is_refused():
    with pytest.raises(ValueError, match="^token authentication needs at least one token$"):
        TokenAuthInterceptor(publisher_tokens=[], reader_tokens=[])
    TokenAuthInterceptor(publisher_tokens=[], reader_tokens=[READER])  # readers alone are a valid setup


def _echo_handlers(reached: list[str]) -> dict[str, grpc.RpcMethodHandler]:
    def handler(name):
        async def answer(request: bytes, context) -> bytes:
            reached.append(name)
            return b"ok:" + request

        return grpc.unary_unary_rpc_method_handler(answer)

    return {name: handler(name) for name in [*PUBLISHER_ONLY, *READABLE]}


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
async def channel_and_reached():
    reached: list[str] = []
    auth = TokenAuthInterceptor(publisher_tokens=[PUBLISHER], reader_tokens=[READER])
    async with serving([auth], _echo_handlers(reached)) as channel:
        yield channel, reached


async def test_a_publisher_may_call_everything_and_a_reader_only_what_reads(channel_and_reached):
    channel, reached = channel_and_reached
    for name in [*PUBLISHER_ONLY, *READABLE]:
        assert await unary(channel, name, b"x", _bearer(PUBLISHER)) == b"ok:x"
    for name in READABLE:
        assert await unary(channel, name, b"y", _bearer(READER)) == b"ok:y"
    assert reached == [*PUBLISHER_ONLY, *READABLE, *READABLE]


@pytest.mark.parametrize("name", PUBLISHER_ONLY)
async def test_a_reader_is_denied_a_publishing_method_by_name(channel_and_reached, name):
    channel, reached = channel_and_reached
    with pytest.raises(errors.PermissionDenied) as caught:
        await unary(channel, name, b"x", _bearer(READER))
    assert caught.value.message == f"{name} needs the publisher role; this token is a reader's"
    assert caught.value.metadata == {"method": name}
    assert reached == []


async def test_a_call_without_a_header_is_told_how_to_send_one(channel_and_reached):
    channel, reached = channel_and_reached
    with pytest.raises(errors.Unauthenticated) as caught:
        await unary(channel, "ListVersions")
    assert caught.value.message == "no authorization header; send 'authorization: Bearer <token>'"
    assert reached == []


async def test_several_authorization_headers_are_refused_even_if_one_is_good(channel_and_reached):
    channel, reached = channel_and_reached
    metadata = (("authorization", f"Bearer {READER}"), ("authorization", f"Bearer {PUBLISHER}"))
    with pytest.raises(errors.Unauthenticated) as caught:
        await unary(channel, "ListVersions", metadata=metadata)
    assert caught.value.message == (
        "2 authorization headers (send exactly one); send 'authorization: Bearer <token>'"
    )
    assert reached == []


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(f"Basic {PUBLISHER}", id="another scheme"),
        pytest.param(f"Bearer {PUBLISHER.upper()}", id="the token is case-sensitive"),
        pytest.param(f"Bearer {PUBLISHER[:-1]}", id="a prefix of a token"),
        pytest.param(f"Bearer {PUBLISHER}x", id="a token with more after it"),
        pytest.param("Bearer", id="no token"),
        pytest.param(PUBLISHER, id="no scheme"),
        pytest.param(f"Bearer{PUBLISHER}", id="no space after the scheme"),
    ],
)
async def test_anything_but_a_known_bearer_token_is_refused(channel_and_reached, value):
    channel, reached = channel_and_reached
    with pytest.raises(errors.Unauthenticated) as caught:
        await unary(channel, "ListVersions", metadata=(("authorization", value),))
    assert caught.value.message == "invalid bearer token"
    assert reached == []


@pytest.mark.parametrize(
    "value", [f"bearer {PUBLISHER}", f"BEARER {PUBLISHER}", f"Bearer  {PUBLISHER}", f"Bearer {PUBLISHER} "]
)
async def test_the_scheme_is_case_insensitive_and_spaces_around_the_token_are_ignored(channel_and_reached, value):
    channel, _ = channel_and_reached
    assert await unary(channel, "Barrier", b"z", (("authorization", value),)) == b"ok:z"


async def test_a_token_listed_for_both_roles_has_the_publishers():
    both = "shared-token-0123456789abcdefgh"
    for publishers, readers in (([both], [both]), ([both], [READER, both])):
        auth = TokenAuthInterceptor(publisher_tokens=publishers, reader_tokens=readers)
        async with serving([auth], _echo_handlers([])) as channel:
            assert await unary(channel, "PublishVersion", b"p", _bearer(both)) == b"ok:p"
    auth = TokenAuthInterceptor(publisher_tokens=[PUBLISHER], reader_tokens=[both, READER])
    async with serving([auth], _echo_handlers([])) as channel:  # the later reader token is a reader still
        assert await status_of(channel, "PublishVersion", b"p", _bearer(READER)) == grpc.StatusCode.PERMISSION_DENIED
        assert await unary(channel, "Score", b"s", _bearer(READER)) == b"ok:s"


async def test_a_refused_call_s_bytes_are_never_parsed():
    def refuse_to_parse(raw: bytes):
        raise AssertionError("the request was parsed")

    async def answer(request, context):
        return b""

    handlers = {"ListVersions": grpc.unary_unary_rpc_method_handler(answer, request_deserializer=refuse_to_parse)}
    auth = TokenAuthInterceptor(publisher_tokens=[PUBLISHER])
    async with serving([auth], handlers) as channel:
        assert await status_of(channel, "ListVersions", b"\xff\xff") == grpc.StatusCode.UNAUTHENTICATED


async def test_health_answers_without_credentials(channel_and_reached):
    channel, _ = channel_and_reached
    response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_a_token_file_skips_blank_lines_and_comments_and_strips_each_token(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"# mounted secret\n\n  {READER}  \n   # indented comment\n{PUBLISHER}\n")
    assert read_tokens(path) == [READER, PUBLISHER]


def test_a_token_file_with_a_short_token_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("a" * 16 + "\n")
    assert read_tokens(str(path)) == ["a" * 16]
    path.write_text(f"{READER}\n" + "b" * 15 + "\n")
    with pytest.raises(ValueError) as caught:
        read_tokens(path)
    assert str(caught.value) == f"{path}: every token must have at least 16 characters"

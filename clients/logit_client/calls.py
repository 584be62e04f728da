"""One description per RPC: the request to send, the versions it touches, and how to read the answer.

Both clients execute these, so the sync and asyncio APIs cannot drift apart in what they send.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from grpc_health.v1 import health_pb2

from logit_common.errors import VersionConflict
from logit_common.v1 import logit_service_pb2 as pb

from .requests import ScoreResult, SequenceInput, build_score_request, parse_score_response
from .versions import PublishedVersion, VersionInfoView, VersionsView

T = TypeVar("T")


@dataclass(frozen=True)
class Call(Generic[T]):
    service: str
    """Key into channels.STUB_FACTORIES."""
    method: str
    request: Any
    convert: Callable[[Any], T]
    policy_versions: frozenset[int] = frozenset()
    """Versions the call needs resident; drives version-affine routing."""


def score(
    sequences: Iterable[SequenceInput],
    *,
    temperature: float,
    allow_ewma_fallback: bool,
    force_ewma: bool,
    spot_check_fraction: float,
    request_id: str | None,
) -> Call[ScoreResult]:
    request = build_score_request(
        sequences,
        temperature=temperature,
        allow_ewma_fallback=allow_ewma_fallback,
        force_ewma=force_ewma,
        spot_check_fraction=spot_check_fraction,
        # Every call gets an id so server logs of a retried call can be joined across replicas.
        request_id=request_id or uuid.uuid4().hex,
    )
    versions = frozenset(span.policy_version for seq in request.sequences for span in seq.spans)
    return Call("logit", "Score", request, lambda response: parse_score_response(request, response), versions)


def publish_version(
    policy_version: int, snapshot_path: str, expected_digest: str | None = None
) -> Call[PublishedVersion]:
    # Safe to retry: publishing the same version with the same digest again is answered already_published.
    request = pb.PublishVersionRequest(policy_version=policy_version, snapshot_path=snapshot_path)

    def convert(response: pb.PublishVersionResponse) -> PublishedVersion:
        published = PublishedVersion.from_response(response)
        if expected_digest is not None and published.digest != expected_digest:
            # The server read a directory of that name other than the one written (the publisher wrote
            # outside the server's snapshot dir, onto a leftover of an earlier run), or the version was
            # taken before: either way it does not serve these weights under this version.
            raise VersionConflict(
                f"the server registered version {policy_version} with digest {published.digest}, but the "
                f"snapshot written has digest {expected_digest}: the server read another {snapshot_path!r} "
                "(is the snapshot directory written to the server's?) or the version was published before "
                "with other weights"
            )
        return published

    return Call("logit", "PublishVersion", request, convert)


def get_version(policy_version: int) -> Call[VersionInfoView]:
    request = pb.GetVersionRequest(policy_version=policy_version)
    return Call("logit", "GetVersion", request, VersionInfoView.from_proto, frozenset({policy_version}))


def list_versions(include_evicted: bool) -> Call[VersionsView]:
    request = pb.ListVersionsRequest(include_evicted=include_evicted)
    return Call("logit", "ListVersions", request, VersionsView.from_proto)


def lease_versions(policy_versions: Iterable[int], holder: str, ttl_s: float, release: bool) -> Call[tuple[int, ...]]:
    # Safe to retry: a lease is renewed (its expiry replaced), a release of nothing is a no-op.
    versions = [int(v) for v in policy_versions]
    request = pb.LeaseVersionsRequest(holder=holder, policy_versions=versions, ttl_s=ttl_s, release=release)
    return Call("logit", "LeaseVersions", request, lambda r: tuple(r.leased_versions))


def submit_segments(segments: Iterable[SequenceInput], temperature: float) -> Call[tuple[int, int]]:
    # Built like a ScoreRequest, so a segment is checked exactly as a scored sequence would be.
    built = build_score_request(segments, temperature=temperature)
    request = pb.SubmitSegmentsRequest(segments=built.sequences, temperature=built.temperature)
    versions = frozenset(span.policy_version for seq in request.segments for span in seq.spans)
    return Call("logit", "SubmitSegments", request, lambda r: (r.accepted_tokens, r.pending_tokens), versions)


def barrier(policy_version: int) -> Call[int]:
    request = pb.BarrierRequest(policy_version=policy_version)
    return Call("logit", "Barrier", request, lambda r: r.pending_tokens)


def health(service: str) -> Call[bool]:
    request = health_pb2.HealthCheckRequest(service=service)
    return Call("health", "Check", request, lambda r: r.status == health_pb2.HealthCheckResponse.SERVING)

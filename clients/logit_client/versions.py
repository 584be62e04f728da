"""Read-only views of version metadata (VersionInfo, ListVersionsResponse) as plain dataclasses.

They exist so trainer code never handles protobuf messages; conversion is one-way, from the wire.
"""

from __future__ import annotations

from dataclasses import dataclass

from logit_common.types import VersionState
from logit_common.v1 import logit_service_pb2 as pb

_STATE_NAMES = {
    pb.VERSION_STATE_RETAINED: VersionState.RETAINED.value,
    pb.VERSION_STATE_EVICTED: VersionState.EVICTED.value,
}


@dataclass(frozen=True)
class VersionInfoView:
    """One published version (or the EWMA pseudo-version) as a replica reports it."""

    policy_version: int
    snapshot_path: str
    digest: str
    model_config_hash: str
    dtype: str
    created_at: float
    state: str
    """"retained", "evicted", or "unspecified" when the server left it unset."""
    resident: bool
    """Whether the replica that answered holds the weights in RAM."""
    covers_versions: tuple[int, ...]
    leased: bool = False
    """Whether a holder's lease keeps the version servable (possibly beyond the retention window)."""

    @classmethod
    def from_proto(cls, info: pb.VersionInfo) -> VersionInfoView:
        return cls(**_fields(info))


@dataclass(frozen=True)
class PublishedVersion(VersionInfoView):
    """The answer to PublishVersion: the registered version and whether it was already there."""

    already_published: bool = False

    @classmethod
    def from_response(cls, response: pb.PublishVersionResponse) -> PublishedVersion:
        return cls(**_fields(response.version), already_published=response.already_published)


@dataclass(frozen=True)
class VersionsView:
    """The answer to ListVersions."""

    versions: tuple[VersionInfoView, ...]
    latest_version: int | None
    """None when nothing is published."""
    retention_window: int
    oldest_retained_version: int | None
    """Lowest servable version; None when nothing is published."""
    ewma: VersionInfoView | None
    """The EWMA pseudo-version, when the service keeps one."""

    @classmethod
    def from_proto(cls, response: pb.ListVersionsResponse) -> VersionsView:
        return cls(
            versions=tuple(VersionInfoView.from_proto(v) for v in response.versions),
            latest_version=None if response.latest_version < 0 else response.latest_version,
            retention_window=response.retention_window,
            oldest_retained_version=(
                None if response.oldest_retained_version < 0 else response.oldest_retained_version
            ),
            ewma=VersionInfoView.from_proto(response.ewma) if response.HasField("ewma") else None,
        )


def _fields(info: pb.VersionInfo) -> dict:
    return dict(
        policy_version=info.policy_version,
        snapshot_path=info.snapshot_path,
        digest=info.digest,
        model_config_hash=info.model_config_hash,
        dtype=info.dtype,
        created_at=info.created_at,
        state=_STATE_NAMES.get(info.state, "unspecified"),
        resident=info.resident,
        covers_versions=tuple(info.covers_versions),
        leased=info.leased,
    )

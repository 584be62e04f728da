from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TokenSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOKEN_SOURCE_UNSPECIFIED: _ClassVar[TokenSource]
    TOKEN_SOURCE_EXACT: _ClassVar[TokenSource]
    TOKEN_SOURCE_EWMA: _ClassVar[TokenSource]
    TOKEN_SOURCE_UNAVAILABLE: _ClassVar[TokenSource]

class Numerics(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NUMERICS_UNSPECIFIED: _ClassVar[Numerics]
    NUMERICS_TRAINING: _ClassVar[Numerics]
    NUMERICS_INFERENCE: _ClassVar[Numerics]

class VersionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERSION_STATE_UNSPECIFIED: _ClassVar[VersionState]
    VERSION_STATE_RETAINED: _ClassVar[VersionState]
    VERSION_STATE_EVICTED: _ClassVar[VersionState]
TOKEN_SOURCE_UNSPECIFIED: TokenSource
TOKEN_SOURCE_EXACT: TokenSource
TOKEN_SOURCE_EWMA: TokenSource
TOKEN_SOURCE_UNAVAILABLE: TokenSource
NUMERICS_UNSPECIFIED: Numerics
NUMERICS_TRAINING: Numerics
NUMERICS_INFERENCE: Numerics
VERSION_STATE_UNSPECIFIED: VersionState
VERSION_STATE_RETAINED: VersionState
VERSION_STATE_EVICTED: VersionState

class VersionSpan(_message.Message):
    __slots__ = ("policy_version", "start", "end")
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    policy_version: int
    start: int
    end: int
    def __init__(self, policy_version: _Optional[int] = ..., start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class Sequence(_message.Message):
    __slots__ = ("sample_id", "token_ids", "spans")
    SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SPANS_FIELD_NUMBER: _ClassVar[int]
    sample_id: str
    token_ids: bytes
    spans: _containers.RepeatedCompositeFieldContainer[VersionSpan]
    def __init__(self, sample_id: _Optional[str] = ..., token_ids: _Optional[bytes] = ..., spans: _Optional[_Iterable[_Union[VersionSpan, _Mapping]]] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("sequences", "temperature", "allow_ewma_fallback", "spot_check_fraction", "request_id", "force_ewma")
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    ALLOW_EWMA_FALLBACK_FIELD_NUMBER: _ClassVar[int]
    SPOT_CHECK_FRACTION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_EWMA_FIELD_NUMBER: _ClassVar[int]
    sequences: _containers.RepeatedCompositeFieldContainer[Sequence]
    temperature: float
    allow_ewma_fallback: bool
    spot_check_fraction: float
    request_id: str
    force_ewma: bool
    def __init__(self, sequences: _Optional[_Iterable[_Union[Sequence, _Mapping]]] = ..., temperature: _Optional[float] = ..., allow_ewma_fallback: _Optional[bool] = ..., spot_check_fraction: _Optional[float] = ..., request_id: _Optional[str] = ..., force_ewma: _Optional[bool] = ...) -> None: ...

class SpanResult(_message.Message):
    __slots__ = ("requested_version", "served_version", "snapshot_digest", "start", "end", "source")
    REQUESTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVED_VERSION_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    requested_version: int
    served_version: int
    snapshot_digest: str
    start: int
    end: int
    source: TokenSource
    def __init__(self, requested_version: _Optional[int] = ..., served_version: _Optional[int] = ..., snapshot_digest: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., source: _Optional[_Union[TokenSource, str]] = ...) -> None: ...

class SequenceResult(_message.Message):
    __slots__ = ("sample_id", "logprobs", "sources", "spans")
    SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    SPANS_FIELD_NUMBER: _ClassVar[int]
    sample_id: str
    logprobs: bytes
    sources: bytes
    spans: _containers.RepeatedCompositeFieldContainer[SpanResult]
    def __init__(self, sample_id: _Optional[str] = ..., logprobs: _Optional[bytes] = ..., sources: _Optional[bytes] = ..., spans: _Optional[_Iterable[_Union[SpanResult, _Mapping]]] = ...) -> None: ...

class SpotCheck(_message.Message):
    __slots__ = ("tokens_checked", "max_abs_error", "mean_abs_error")
    TOKENS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_ERROR_FIELD_NUMBER: _ClassVar[int]
    MEAN_ABS_ERROR_FIELD_NUMBER: _ClassVar[int]
    tokens_checked: int
    max_abs_error: float
    mean_abs_error: float
    def __init__(self, tokens_checked: _Optional[int] = ..., max_abs_error: _Optional[float] = ..., mean_abs_error: _Optional[float] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("results", "tokens_scored", "backend", "dtype", "spot_check", "compute_seconds", "numerics")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_SCORED_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SPOT_CHECK_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NUMERICS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SequenceResult]
    tokens_scored: int
    backend: str
    dtype: str
    spot_check: SpotCheck
    compute_seconds: float
    numerics: Numerics
    def __init__(self, results: _Optional[_Iterable[_Union[SequenceResult, _Mapping]]] = ..., tokens_scored: _Optional[int] = ..., backend: _Optional[str] = ..., dtype: _Optional[str] = ..., spot_check: _Optional[_Union[SpotCheck, _Mapping]] = ..., compute_seconds: _Optional[float] = ..., numerics: _Optional[_Union[Numerics, str]] = ...) -> None: ...

class PublishVersionRequest(_message.Message):
    __slots__ = ("policy_version", "snapshot_path")
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_PATH_FIELD_NUMBER: _ClassVar[int]
    policy_version: int
    snapshot_path: str
    def __init__(self, policy_version: _Optional[int] = ..., snapshot_path: _Optional[str] = ...) -> None: ...

class VersionInfo(_message.Message):
    __slots__ = ("policy_version", "snapshot_path", "digest", "model_config_hash", "dtype", "created_at", "state", "resident", "covers_versions", "leased")
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_PATH_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    MODEL_CONFIG_HASH_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_FIELD_NUMBER: _ClassVar[int]
    COVERS_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    LEASED_FIELD_NUMBER: _ClassVar[int]
    policy_version: int
    snapshot_path: str
    digest: str
    model_config_hash: str
    dtype: str
    created_at: float
    state: VersionState
    resident: bool
    covers_versions: _containers.RepeatedScalarFieldContainer[int]
    leased: bool
    def __init__(self, policy_version: _Optional[int] = ..., snapshot_path: _Optional[str] = ..., digest: _Optional[str] = ..., model_config_hash: _Optional[str] = ..., dtype: _Optional[str] = ..., created_at: _Optional[float] = ..., state: _Optional[_Union[VersionState, str]] = ..., resident: _Optional[bool] = ..., covers_versions: _Optional[_Iterable[int]] = ..., leased: _Optional[bool] = ...) -> None: ...

class PublishVersionResponse(_message.Message):
    __slots__ = ("version", "already_published")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALREADY_PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    version: VersionInfo
    already_published: bool
    def __init__(self, version: _Optional[_Union[VersionInfo, _Mapping]] = ..., already_published: _Optional[bool] = ...) -> None: ...

class GetVersionRequest(_message.Message):
    __slots__ = ("policy_version",)
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    policy_version: int
    def __init__(self, policy_version: _Optional[int] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ("include_evicted",)
    INCLUDE_EVICTED_FIELD_NUMBER: _ClassVar[int]
    include_evicted: bool
    def __init__(self, include_evicted: _Optional[bool] = ...) -> None: ...

class ListVersionsResponse(_message.Message):
    __slots__ = ("versions", "latest_version", "retention_window", "oldest_retained_version", "ewma")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    RETENTION_WINDOW_FIELD_NUMBER: _ClassVar[int]
    OLDEST_RETAINED_VERSION_FIELD_NUMBER: _ClassVar[int]
    EWMA_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[VersionInfo]
    latest_version: int
    retention_window: int
    oldest_retained_version: int
    ewma: VersionInfo
    def __init__(self, versions: _Optional[_Iterable[_Union[VersionInfo, _Mapping]]] = ..., latest_version: _Optional[int] = ..., retention_window: _Optional[int] = ..., oldest_retained_version: _Optional[int] = ..., ewma: _Optional[_Union[VersionInfo, _Mapping]] = ...) -> None: ...

class LeaseVersionsRequest(_message.Message):
    __slots__ = ("holder", "policy_versions", "ttl_s", "release")
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    holder: str
    policy_versions: _containers.RepeatedScalarFieldContainer[int]
    ttl_s: float
    release: bool
    def __init__(self, holder: _Optional[str] = ..., policy_versions: _Optional[_Iterable[int]] = ..., ttl_s: _Optional[float] = ..., release: _Optional[bool] = ...) -> None: ...

class LeaseVersionsResponse(_message.Message):
    __slots__ = ("leased_versions", "expires_in_s")
    LEASED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_S_FIELD_NUMBER: _ClassVar[int]
    leased_versions: _containers.RepeatedScalarFieldContainer[int]
    expires_in_s: float
    def __init__(self, leased_versions: _Optional[_Iterable[int]] = ..., expires_in_s: _Optional[float] = ...) -> None: ...

class SubmitSegmentsRequest(_message.Message):
    __slots__ = ("segments", "temperature")
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    segments: _containers.RepeatedCompositeFieldContainer[Sequence]
    temperature: float
    def __init__(self, segments: _Optional[_Iterable[_Union[Sequence, _Mapping]]] = ..., temperature: _Optional[float] = ...) -> None: ...

class SubmitSegmentsResponse(_message.Message):
    __slots__ = ("accepted_tokens", "pending_tokens")
    ACCEPTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PENDING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    accepted_tokens: int
    pending_tokens: int
    def __init__(self, accepted_tokens: _Optional[int] = ..., pending_tokens: _Optional[int] = ...) -> None: ...

class BarrierRequest(_message.Message):
    __slots__ = ("policy_version",)
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    policy_version: int
    def __init__(self, policy_version: _Optional[int] = ...) -> None: ...

class BarrierResponse(_message.Message):
    __slots__ = ("pending_tokens", "kept_segments")
    PENDING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KEPT_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    pending_tokens: int
    kept_segments: int
    def __init__(self, pending_tokens: _Optional[int] = ..., kept_segments: _Optional[int] = ...) -> None: ...

class SnapshotChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: SnapshotHeader
    data: SnapshotData
    def __init__(self, header: _Optional[_Union[SnapshotHeader, _Mapping]] = ..., data: _Optional[_Union[SnapshotData, _Mapping]] = ...) -> None: ...

class SnapshotHeader(_message.Message):
    __slots__ = ("policy_version", "manifest_json", "files", "base_version", "has_base")
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    HAS_BASE_FIELD_NUMBER: _ClassVar[int]
    policy_version: int
    manifest_json: bytes
    files: _containers.RepeatedCompositeFieldContainer[SnapshotFile]
    base_version: int
    has_base: bool
    def __init__(self, policy_version: _Optional[int] = ..., manifest_json: _Optional[bytes] = ..., files: _Optional[_Iterable[_Union[SnapshotFile, _Mapping]]] = ..., base_version: _Optional[int] = ..., has_base: _Optional[bool] = ...) -> None: ...

class SnapshotFile(_message.Message):
    __slots__ = ("name", "size", "sha256", "compact")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    COMPACT_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    sha256: str
    compact: bool
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., compact: _Optional[bool] = ...) -> None: ...

class SnapshotData(_message.Message):
    __slots__ = ("file_index", "offset", "data")
    FILE_INDEX_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    file_index: int
    offset: int
    data: bytes
    def __init__(self, file_index: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class FetchVersionRequest(_message.Message):
    __slots__ = ("policy_version",)
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    policy_version: int
    def __init__(self, policy_version: _Optional[int] = ...) -> None: ...

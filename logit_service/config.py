"""Server configuration: one pydantic model, and the only place that reads environment variables.

Every field can be set by a CLI flag or by `LOGIT_SERVICE_<FIELD_NAME_UPPER>`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ENV_PREFIX = "LOGIT_SERVICE_"

MiB = 1 << 20
GiB = 1 << 30


class ServerConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    host: str = "127.0.0.1"
    """Interface to bind; 0.0.0.0 to serve beside a cluster."""
    port: int = Field(50051, ge=0, le=65535)
    """TCP port; 0 picks a free one (printed at start-up)."""
    snapshot_dir: Path
    """Directory of version snapshots (v00000007/ ...); the trainer publishes into it."""
    redis_url: str | None = None
    """Redis URL for the shared registry; unset keeps an in-process registry (single node)."""
    redis_namespace: str = Field("logit", min_length=1)
    """Key prefix in Redis, so several deployments can share one Redis."""
    retention_window: int = Field(8, ge=1)
    """K: versions newer than latest − K are servable; older ones are evicted (the max staleness)."""
    max_leased_versions: int = Field(16, ge=0)
    """Distinct versions that may be leased at once, so at most this many outlive the window (bounds disk)."""
    max_lease_holders: int = Field(1024, ge=1)
    """Holders one version may be leased by at once (each holder name at most 256 bytes); with
    `max_leased_versions` this bounds the leases kept. A new holder over it gets RESOURCE_EXHAUSTED."""
    max_lease_ttl_s: float = Field(3600.0, gt=0)
    """Longest lease one call may take; holders renew for longer."""
    cache_bytes: int = Field(2 * GiB, ge=0)
    """Byte budget of the CPU-RAM LRU cache of version weights."""
    delete_evicted: bool = True
    """Delete snapshot directories of evicted versions, so disk use stays bounded by the window."""
    compact_snapshots: bool = False
    """Store retained versions other than the newest as lossless deltas from their newer neighbour
    (bit-exact, verified on every load; ~0.02x the bytes of a bf16 copy, ~0.3x of fp32). Off by default:
    it costs this replica CPU after each publish, and tools other than this service that read the
    shared directory find only the newest and keyframe versions as Hugging Face directories."""
    compact_keyframe_interval: int = Field(8, ge=1)
    """With compact_snapshots, every version whose number is a multiple of this stays full too, so a
    restore never follows more than this many deltas."""
    max_upload_bytes: int = Field(64 * GiB, ge=1)
    """Bytes one streamed snapshot (UploadVersion, or a copy fetched from a peer) may hold, manifest and
    files as sent; a larger one is refused with RESOURCE_EXHAUSTED before a byte of it is written. Its
    messages carry up to 1 MiB of data each, so `max_request_bytes` must stay above about 1.1 MiB."""
    fetch_from: str | None = None
    """Comma-separated host:port of peer replicas to copy a version from (FetchVersion) when this
    replica is asked to serve or publish one its snapshot directory lacks: replicas without a shared disk."""
    fetch_timeout_s: float = Field(600.0, gt=0)
    """Deadline of one copy from a peer."""
    fetch_tls_ca_file: Path | None = None
    """PEM CA bundle to verify peers with; set, copies travel over TLS (this replica's own certificate and
    key, when set, are presented for mutual TLS). Copies send this replica's `auth_token` (else its
    `reader_token`) when one is set."""
    backend: Literal["torch", "vllm"] = "torch"
    """Scoring backend: "torch" (training-side numerics, any temperature) or "vllm" (inference-side
    numerics flagged in every answer, temperature 1.0 only; needs the vllm package)."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Training-side compute dtype of the forward; the log-softmax normaliser is always float32."""
    device: str = "cpu"
    """Torch device of the scoring model ("cpu", "cuda", "cuda:1")."""
    attn_implementation: str | None = None
    """transformers attention implementation ("sdpa", "eager", "flash_attention_2", ...); unset or "auto"
    lets transformers choose for the architecture (sdpa where it supports it, else eager). Match the
    trainer's; a choice the architecture refuses fails the first publish with INVALID_ARGUMENT."""
    max_sequences_per_request: int = Field(4096, ge=1)
    """Requests with more sequences are refused with RESOURCE_EXHAUSTED."""
    max_tokens_per_request: int = Field(1 << 20, ge=1)
    """Sum of sequence lengths a request may carry."""
    max_message_bytes: int = Field(256 * MiB, ge=4 * MiB)
    """gRPC message limit: answers sent, and (with `max_request_bytes`, whichever is smaller) requests
    received on any method, health and reflection included."""
    max_request_bytes: int = Field(64 * MiB, ge=64 * 1024)
    """Bytes one Score or SubmitSegments request may carry (at most `max_message_bytes`), checked before
    it is decoded; other methods' requests are held to 64 KiB. Larger ones get RESOURCE_EXHAUSTED."""
    max_inflight_request_bytes: int = Field(512 * MiB, ge=64 * 1024)
    """Bytes of requests being decoded or served at once, over all calls; a request that would exceed
    it is refused at once with RESOURCE_EXHAUSTED (retryable). At least `max_request_bytes`."""
    max_batch_tokens: int = Field(16384, ge=64)
    """Padded tokens per forward micro-batch (memory bound of one forward)."""
    batch_invariant: bool = True
    """Answers bit-identical whatever they are batched with: sequences of every caller share forwards
    of fixed shapes (right-padded to a length bucket, a fixed row count per bucket, dummy rows where
    fewer wait), or go alone where the model's probe shows rows of a tile interact (MoE). Off: batches
    of any shape (answers then move by ~1e-7 with batch composition)."""
    tile_tokens: int = Field(2048, ge=16)
    """Padded tokens of one fixed-shape tile: a bucket of length L has min(tile_rows, tile_tokens // L)
    rows (at least 1). Larger tiles batch more on accelerators; a lone short sequence pays the whole tile
    unless `shrink_partial_tiles` may run it in fewer rows."""
    tile_rows: int = Field(8, ge=1)
    """Most rows of one tile, so a lone short sequence never pays for more than this many dummy rows."""
    shrink_partial_tiles: bool = False
    """A tile that fewer sequences fill than its rows runs with the fewest power-of-two rows that hold
    them, where a check on random tokens (the first time that shape is needed) shows it gives every row
    the bits of the full tile; elsewhere it keeps its full rows. A lone short sequence then pays one row.
    On a 2-core CPU it cuts a lone caller's latency about 3.7 times (one row of 256 tokens instead of
    eight) and leaves 8 concurrent callers' throughput as it was (benchmarks/README.md). Off by default
    all the same: with it, bit-identity rests on that check of each shape, not on every forward having
    one shape."""
    coalesce_window_s: float = Field(0.05, ge=0)
    """Longest a Score waits, when several callers were active, for their next calls to arrive before
    it starts; never more than a tenth of the compute time of the batch it waits for, estimated per call
    from the fullest of the last batches."""
    burst_gap_s: float = Field(0.002, ge=0)
    """A Score that finds the model idle and its forwards with room for more waits while further calls
    keep arriving less than this apart (a burst, such as a trainer's ranks calling after a step), so the
    burst shares forwards instead of its first call going alone. The gap is at most a fiftieth of the last
    batch's compute, the whole wait at most a tenth of it and `coalesce_window_s`; a caller that is
    really alone pays one gap per call. 0: such a call starts at once."""
    logprob_chunk_tokens: int = Field(1024, ge=1)
    """Rows of hidden states turned into vocabulary logits at once (never the whole batch)."""
    keep_freed_memory: bool = True
    """glibc only: fixed malloc thresholds (mmap 32 MiB, trim 1 GiB) for the process that starts the
    server, so memory a forward frees is reused by the next one instead of being unmapped and faulted
    back in, zero-filled, every call; process-wide, so off where the server runs inside a process whose
    allocator must not be touched."""
    segment_cache_tokens: int = Field(4_000_000, ge=0)
    """Tokens of answers kept for submitted segments (dedicated old-logit model strategy), LRU."""
    segment_cache_bytes: int = Field(256 * MiB, ge=0)
    """Bytes of answers kept for submitted segments, sample ids and bookkeeping included, LRU: many
    short segments with long sample ids are bounded as well as many tokens."""
    max_pending_tokens: int = Field(1_000_000, ge=1)
    """Tokens of submitted segments (prefixes included) waiting to be scored; more are refused with
    RESOURCE_EXHAUSTED."""
    max_pending_bytes: int = Field(128 * MiB, ge=1)
    """Bytes those pending segments hold (token ids, sample ids, spans, bookkeeping); more are refused
    with RESOURCE_EXHAUSTED."""
    scan_interval_s: float = Field(1.0, gt=0)
    """How often the snapshot directory is rescanned for versions written there directly."""
    ewma_beta: float | None = Field(None, gt=0, lt=1)
    """EWMA decay of the approximate route; unset derives it from ewma_target_age."""
    ewma_target_age: float = Field(2.0, gt=0)
    """Centre of mass β/(1−β) of the EWMA in versions, used when ewma_beta is unset."""
    ewma_enabled: bool = True
    """Fold every published version into the EWMA pseudo-version (the fallback route)."""
    auth_token: str | None = Field(None, min_length=16, repr=False)
    """Publisher bearer token (`authorization: Bearer <token>`): every call, publishing, leases and
    segment submission included. With any token set, calls without a valid one get UNAUTHENTICATED;
    health and reflection stay open for probes. No token at all: no authentication (private network)."""
    auth_token_file: Path | None = None
    """File of publisher tokens, one per line (a mounted secret); added to `auth_token`."""
    reader_token: str | None = Field(None, min_length=16, repr=False)
    """Reader bearer token: Score, GetVersion, ListVersions and FetchVersion only; other calls get PERMISSION_DENIED."""
    reader_token_file: Path | None = None
    """File of reader tokens, one per line; added to `reader_token`."""
    tls_cert_file: Path | None = None
    """PEM certificate chain of this server; with `tls_key_file`, the port speaks TLS only."""
    tls_key_file: Path | None = None
    """PEM private key of `tls_cert_file`."""
    tls_client_ca_file: Path | None = None
    """PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS)."""
    replica_id: str | None = None
    """Name of this replica in the registry; defaults to the advertised address."""
    advertise_address: str | None = None
    """host:port clients dial to reach this replica (registered in its lease); defaults to host:port,
    with this machine's hostname in place of a wildcard bind address such as 0.0.0.0."""
    heartbeat_s: float = Field(2.0, gt=0)
    """Replica lease refresh period; the lease TTL is three periods."""
    grace_s: float = Field(5.0, ge=0)
    """Seconds in-flight RPCs get on shutdown."""
    max_concurrent_rpcs: int = Field(64, ge=1)
    """LogitService calls in progress at once; further ones are refused at once with RESOURCE_EXHAUSTED."""
    max_probe_rpcs: int = Field(32, ge=1)
    """Health and reflection calls (open Health.Watch streams included) in progress at once, counted
    apart from the API's, so unauthenticated probes can never starve scoring."""
    metrics_port: int | None = Field(None, ge=0, le=65535)
    """Serve Prometheus metrics over HTTP at /metrics on this port (bound to `host`); 0 picks a free
    one; unset serves none."""
    access_log: Literal["off", "text", "json"] = "text"
    """One line per call on the `logit_service.access` logger (INFO): request id, method, status,
    tokens, versions, duration, peer; `json` writes each line as a JSON object. Secrets are never logged."""

    @field_validator("attn_implementation", mode="before")
    @classmethod
    def _auto_attention(cls, value: Any) -> Any:
        return None if value in ("auto", "") else value

    @model_validator(mode="after")
    def _check(self) -> "ServerConfig":
        if self.max_batch_tokens < self.logprob_chunk_tokens // 16:
            raise ValueError("max_batch_tokens is far below logprob_chunk_tokens")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.max_inflight_request_bytes < min(self.max_request_bytes, self.max_message_bytes):
            raise ValueError("max_inflight_request_bytes must be at least max_request_bytes (one request must fit)")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        return self

    @property
    def fetch_peers(self) -> list[str]:
        return [p.strip() for p in (self.fetch_from or "").split(",") if p.strip()]

    @property
    def resolved_ewma_beta(self) -> float:
        if self.ewma_beta is not None:
            return self.ewma_beta
        # Centre of mass of the weights β^{n−i} is β/(1−β); solve for β.
        return self.ewma_target_age / (1.0 + self.ewma_target_age)


def env_overrides(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """ServerConfig fields given as LOGIT_SERVICE_* environment variables (strings; pydantic parses).

    Not pydantic-settings: it reads the variables that match fields and ignores the rest, so a misspelt
    LOGIT_SERVICE_* name would pass unnoticed; refusing it is the point of this function.
    """
    environ = dict(os.environ) if environ is None else environ
    known = {ENV_PREFIX + name.upper(): name for name in ServerConfig.model_fields}
    unknown = sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known)
    if unknown:  # a misspelt variable would otherwise be ignored without a word
        raise ValueError(f"unknown environment variable(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return {name: environ[key] for key, name in known.items() if environ.get(key, "") != ""}

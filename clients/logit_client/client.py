"""The blocking client: each method is one RPC under one deadline, retried on the next replica when that can help."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc

from logit_common.errors import LogitServiceError
from logit_common.snapshots.manifest import read_manifest

from . import calls
from .base import ClientBase, Metadata
from .batching import DEFAULT_CALL_TOKENS, join_results
from .requests import ScoreResult, SequenceInput
from .retry import DEFAULT_MAX_RETRIES, DEFAULT_RETRY_BACKOFF_S, error_from_rpc
from .routing import Router
from .versions import PublishedVersion, VersionInfoView, VersionsView

T = TypeVar("T")


class LogitClient(ClientBase):
    """Sync client of the old-logit service over one or more replicas (`host:port` targets)."""

    def __init__(
        self,
        targets: str | Sequence[str],
        *,
        timeout_s: float = 60.0,
        max_retries: int | None = DEFAULT_MAX_RETRIES,
        retry_backoff_s: float = DEFAULT_RETRY_BACKOFF_S,
        max_message_bytes: int = 256 * 2**20,
        metadata: Metadata | None = None,
        router: Router | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        auth_token: str | None = None,
    ) -> None:
        super().__init__(
            targets,
            timeout_s=timeout_s,
            max_retries=max_retries,
            retry_backoff_s=retry_backoff_s,
            max_message_bytes=max_message_bytes,
            metadata=metadata,
            auth_token=auth_token,
            router=router,
            credentials=credentials,
            aio=False,
        )

    def _invoke(self, call: calls.Call[T], timeout_s: float | None, target: str | None = None) -> T:
        plan = self._plan(call, timeout_s, target)
        while True:
            target_now, attempt_timeout_s = plan.next_attempt()
            try:
                response = self._send(call, target_now, attempt_timeout_s)
            except grpc.RpcError as rpc_error:
                error = error_from_rpc(rpc_error, target_now)
                delay_s = plan.backoff_after(error)
                if delay_s is None:
                    raise error from rpc_error
                self._log_retry(call, target_now, error, delay_s)
                time.sleep(delay_s)
                continue
            return call.convert(response)

    def score(
        self,
        sequences: Iterable[SequenceInput],
        *,
        temperature: float = 1.0,
        allow_ewma_fallback: bool = False,
        force_ewma: bool = False,
        spot_check_fraction: float = 0.0,
        timeout_s: float | None = None,
        request_id: str | None = None,
        max_call_tokens: int = DEFAULT_CALL_TOKENS,
        max_parallel_calls: int = 4,
    ) -> ScoreResult:
        """Log-probs of every span of every sequence, under the version each span names.

        A batch over `max_call_tokens` tokens is sent as several calls (up to `max_parallel_calls` at
        once, spread over replicas), all within one deadline; the answer comes back in request order.
        """
        score_calls, deadline = self._score_calls(
            sequences,
            max_call_tokens,
            timeout_s,
            temperature=temperature,
            allow_ewma_fallback=allow_ewma_fallback,
            force_ewma=force_ewma,
            spot_check_fraction=spot_check_fraction,
            request_id=request_id,
        )

        def one(call: calls.Call[ScoreResult]) -> ScoreResult:
            return self._invoke(call, self._remaining(deadline))

        if len(score_calls) == 1:
            return one(score_calls[0])
        with ThreadPoolExecutor(max_workers=min(len(score_calls), max_parallel_calls)) as pool:
            return join_results(list(pool.map(one, score_calls)))

    def publish_version(
        self,
        policy_version: int,
        snapshot_path: str,
        *,
        timeout_s: float | None = None,
        expected_digest: str | None = None,
    ) -> PublishedVersion:
        """Registers an already written snapshot directory as `policy_version`. With `expected_digest`
        (the digest of the snapshot written), raises VersionConflict unless the server registered
        exactly those weights."""
        return self._invoke(calls.publish_version(policy_version, snapshot_path, expected_digest), timeout_s)

    def publish(
        self,
        policy_version: int,
        weights: Any,
        snapshot_dir: str | Path,
        *,
        model_config: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> PublishedVersion:
        """Writes `weights` as a snapshot under `snapshot_dir` and registers it; `timeout_s` bounds the RPC only."""
        from .publish import publish

        return publish(self, policy_version, weights, snapshot_dir, model_config=model_config, timeout_s=timeout_s)

    def upload_version(
        self,
        policy_version: int,
        weights: Any,
        *,
        model_config: Mapping[str, Any] | None = None,
        work_dir: str | Path | None = None,
        base_dir: str | Path | None = None,
        compact: bool = True,
        target: str | None = None,
        timeout_s: float | None = None,
        chunk_bytes: int | None = None,
    ) -> PublishedVersion:
        """Publishes without a shared disk: streams the snapshot to one replica (`target`, else the first
        in routing order), which verifies and registers it; replicas without it copy it from there
        (`--fetch-from`). Not retried: a failed upload leaves nothing registered, call again.

        `weights` is a snapshot directory, an nn.Module or a state dict (written under `work_dir`, else
        a temporary directory). With `compact`, the weights travel as their difference from `base_dir`
        (default: the newest lower version beside the snapshot, e.g. the previous upload's in `work_dir`)
        when the replica holds that version with the same digest; else as full files. Raises
        VersionConflict unless the replica registered exactly these weights.
        """
        from logit_common.errors import VersionConflict
        from logit_common.snapshots.stream import CHUNK_BYTES

        from .upload import newest_base_below, plan_upload, snapshot_dir_of

        snapshot_dir, cleanup = snapshot_dir_of(policy_version, weights, work_dir, model_config)
        try:
            target = target or self._order.for_versions(frozenset({policy_version}))[0]
            base = Path(base_dir) if base_dir is not None else newest_base_below(snapshot_dir) if compact else None
            if base is not None and not (compact and self._holds(target, base, timeout_s)):
                base = None
            plan = plan_upload(snapshot_dir, base)
            expected = read_manifest(snapshot_dir).digest
            stub = self._pool.stub(target, "logit")
            try:
                response = stub.UploadVersion(
                    plan.messages(chunk_bytes or CHUNK_BYTES),
                    timeout=self.timeout_s if timeout_s is None else timeout_s,
                    metadata=self._metadata or None,
                )
            except grpc.RpcError as rpc_error:
                raise error_from_rpc(rpc_error, target) from rpc_error
        finally:
            cleanup()
        published = PublishedVersion.from_response(response)
        if published.digest != expected:
            raise VersionConflict(
                f"the replica registered version {policy_version} with digest {published.digest}, but the "
                f"snapshot sent has digest {expected}: the version was published before with other weights"
            )
        return published

    def _holds(self, target: str, base_dir: Path, timeout_s: float | None) -> bool:
        """Whether `target` serves the version of a local snapshot with that very digest."""
        manifest = read_manifest(base_dir)
        try:
            info = self._invoke(calls.get_version(manifest.policy_version), timeout_s, target)
        except LogitServiceError:
            return False
        return info.digest == manifest.digest and info.state == "retained"

    def lease_versions(
        self, policy_versions: Iterable[int], *, holder: str, ttl_s: float, timeout_s: float | None = None
    ) -> tuple[int, ...]:
        """Keeps these versions servable past the retention window for `holder` (e.g. a partial rollout
        that will resume) for `ttl_s` seconds; call again to renew. All or nothing."""
        return self._invoke(calls.lease_versions(policy_versions, holder, ttl_s, release=False), timeout_s)

    def release_versions(
        self, policy_versions: Iterable[int], *, holder: str, timeout_s: float | None = None
    ) -> None:
        """Ends `holder`'s leases; versions outside the window are then evicted."""
        self._invoke(calls.lease_versions(policy_versions, holder, 0.0, release=True), timeout_s)

    def submit_segments(
        self, segments: Iterable[SequenceInput], *, temperature: float = 1.0, timeout_s: float | None = None
    ) -> tuple[int, int]:
        """Dedicated old-logit model: pushes segments as they are generated (token ids up to the segment's
        end, spans of the positions it generated) to be scored in the background while their version is
        current; a later `score` of those spans is answered from the kept results, even after the version
        left the window. Kept results live on the replica that scored them: send a sample's segments and
        its scores to the same replica. Returns (accepted tokens, tokens pending on the replica)."""
        return self._invoke(calls.submit_segments(segments, temperature), timeout_s)

    def barrier(self, policy_version: int, *, timeout_s: float | None = None) -> int:
        """Partial-rollout interruption: returns once every submitted segment of a version <=
        `policy_version` is scored, so the rollout can switch to the next version. Returns the tokens
        still pending (all of newer versions)."""
        return self._invoke(calls.barrier(policy_version), timeout_s)

    def get_version(self, policy_version: int, *, timeout_s: float | None = None) -> VersionInfoView:
        return self._invoke(calls.get_version(policy_version), timeout_s)

    def list_versions(self, include_evicted: bool = False, *, timeout_s: float | None = None) -> VersionsView:
        return self._invoke(calls.list_versions(include_evicted), timeout_s)

    def health(self, service: str = "", *, target: str | None = None, timeout_s: float | None = None) -> bool:
        """True when a replica (`target`, or the first that answers) reports SERVING for `service`."""
        try:
            return self._invoke(calls.health(service), timeout_s, target)
        except LogitServiceError:
            return False

    def close(self) -> None:
        for channel in self._pool.take_all():
            channel.close()

    def __enter__(self) -> LogitClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

"""Version → weights: publishing, the retention window, and verified loading through the RAM cache.

The store owns the snapshot directory and keeps the registry in step with it. It does not run models.
"""

from __future__ import annotations

import logging
import shutil
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from logit_service.errors import (
    InvalidRequest,
    LeaseLimit,
    ModelRejected,
    SnapshotCorrupt,
    VersionConflict,
    VersionNotFound,
    VersionOutsideWindow,
)
from logit_service.registry.base import Registry
from logit_service.snapshots.cache import CachedWeights, WeightCache, state_dict_nbytes
from logit_service.snapshots.loader import load_verified_config, load_verified_weights
from logit_service.snapshots.manifest import MANIFEST_NAME, Manifest, parse_snapshot_dirname, read_manifest, verify_snapshot
from logit_service.types import EWMA_KEY, VersionRecord, VersionState

log = logging.getLogger(__name__)


class SnapshotStore:
    def __init__(
        self,
        root: Path,
        registry: Registry,
        *,
        retention_window: int,
        cache_bytes: int,
        delete_evicted: bool = True,
        max_leased_versions: int = 16,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.registry = registry
        self.retention_window = retention_window
        self.delete_evicted = delete_evicted
        self.max_leased_versions = max_leased_versions
        self.cache = WeightCache(cache_bytes)
        self._config_hash: str | None = None
        self._lock = threading.RLock()
        # Called once per newly registered version, however it arrived (RPC, directory scan, lookup).
        self.on_published: Callable[[VersionRecord], None] | None = None
        # Called before a version is registered, outside the lock (it may build a model: seconds); a
        # LogitServiceError it raises refuses the publish, so a version no model can serve never appears.
        self.before_register: Callable[[VersionRecord], None] | None = None
        self._refused: dict[str, str] = {}  # scanned directory name → digest whose model was refused

    # --- paths ------------------------------------------------------------------------------------

    def record_for(self, path: Path, manifest: Manifest) -> VersionRecord:
        """The registry record of a snapshot directory under the root, its path stored relative to the
        root: replicas sharing a registry may mount the snapshot storage at different paths."""
        return VersionRecord(
            policy_version=manifest.policy_version,
            snapshot_path=Path(path).resolve().relative_to(self.root.resolve()).as_posix(),
            digest=manifest.digest,
            model_config_hash=manifest.model_config_hash,
            dtype=manifest.dtype,
            created_at=manifest.created_at,
            covers_versions=manifest.covers_versions,
        )

    def path_of(self, record: VersionRecord) -> Path:
        path = Path(record.snapshot_path)
        return path if path.is_absolute() else self.root / path

    # --- the window -------------------------------------------------------------------------------

    def window(self) -> tuple[int, int] | None:
        """(oldest servable, latest) version numbers, or None before anything is published."""
        latest = self.registry.latest()
        if latest is None:
            return None
        return max(latest - self.retention_window + 1, 0), latest

    def _kept(self, policy_version: int, window: tuple[int, int] | None, leased: set[int]) -> bool:
        return window is None or policy_version >= window[0] or policy_version in leased

    def leased(self) -> set[int]:
        return set(self.registry.leased_versions())

    def _outside(self, policy_version: int) -> VersionOutsideWindow:
        window = self.window()
        assert window is not None
        return VersionOutsideWindow(
            f"version {policy_version} is outside the retention window [{window[0]}, {window[1]}] "
            f"(K={self.retention_window}); its weights are no longer kept"
        )

    # --- publishing -------------------------------------------------------------------------------

    def publish(self, policy_version: int, snapshot_path: str | Path) -> tuple[VersionRecord, bool]:
        """Verifies and registers a snapshot directory; returns (record, newly_published)."""
        path = Path(snapshot_path)
        if not path.is_absolute():  # relative to the snapshot dir, wherever the publisher mounts it
            path = self.root / path
        if not path.resolve().is_relative_to(self.root.resolve()):
            # The server reads and hashes what a publish names: keep that to its own snapshot directory.
            raise InvalidRequest(f"snapshot path {path} lies outside this server's snapshot directory {self.root}")
        if not path.is_dir():
            raise InvalidRequest(f"snapshot path {path} is not a directory this server can read")
        manifest = read_manifest(path)
        if manifest.kind != "version":
            raise InvalidRequest(f"{path} holds a {manifest.kind!r} snapshot, not a policy version")
        if manifest.policy_version != policy_version:
            raise InvalidRequest(
                f"{path} holds version {manifest.policy_version}, but it was published as {policy_version}"
            )
        verify_snapshot(path, manifest)
        record = self.record_for(path, manifest)
        return self._register(record)

    def _register(self, record: VersionRecord) -> tuple[VersionRecord, bool]:
        if self.before_register is not None:
            self.before_register(record)
        with self._lock:
            self._check_model(record)
            window = self.window()
            if window is not None and record.policy_version < window[0]:
                raise VersionOutsideWindow(
                    f"version {record.policy_version} is older than the retention window "
                    f"[{window[0]}, {window[1]}] (K={self.retention_window}); it would be evicted at once"
                )
            new = self.registry.publish(record)
            self.apply_retention()
            stored = self.registry.get(record.policy_version) or record
        if new and self.on_published is not None:
            self.on_published(stored)
        return stored, new

    def _check_model(self, record: VersionRecord) -> None:
        expected = self._config_hash or self._first_config_hash()
        if expected is None:
            self._config_hash = record.model_config_hash
        elif expected != record.model_config_hash:
            raise InvalidRequest(
                f"version {record.policy_version} has model config hash {record.model_config_hash[:12]}…, "
                f"but this service serves {expected[:12]}…; one service serves one architecture"
            )
        else:
            self._config_hash = expected

    def _first_config_hash(self) -> str | None:
        records = self.registry.list(include_evicted=True)
        return records[-1].model_config_hash if records else None

    def apply_retention(self) -> list[int]:
        """Evicts versions that fell out of the window and hold no live lease; returns them."""
        window = self.window()
        if window is None:
            return []
        leased = self.leased()
        doomed = [r for r in self.registry.list() if not self._kept(r.policy_version, window, leased)]
        if not doomed:
            return []
        self.registry.mark_evicted([r.policy_version for r in doomed])
        for record in doomed:
            self.cache.drop(str(record.policy_version))
            path = self.path_of(record)
            if self.delete_evicted and path.parent.resolve() == self.root.resolve():
                shutil.rmtree(path, ignore_errors=True)
        log.info("evicted versions %s (window %s)", [r.policy_version for r in doomed], window)
        return [r.policy_version for r in doomed]

    def scan(self) -> list[int]:
        """Registers version directories written straight into the snapshot dir; returns new ones.

        Scanning checks manifests only; file digests are checked when weights are loaded.
        """
        found = []
        for child in sorted(self.root.iterdir()):
            version = parse_snapshot_dirname(child.name)
            if version is None or not child.is_dir():
                continue
            known = self.registry.get(version)
            if known is not None:
                continue
            window = self.window()
            if window is not None and version < window[0]:
                continue
            manifest = None
            try:
                manifest = read_manifest(child)
                if manifest.policy_version != version or manifest.kind != "version":
                    log.warning("skipping %s: manifest names version %s", child, manifest.policy_version)
                    continue
                if self._refused.get(child.name) == manifest.digest:
                    continue  # its model was refused with these very files: say so once, not every scan
                _, new = self._register(self.record_for(child, manifest))
            except (InvalidRequest, SnapshotCorrupt, VersionConflict, VersionOutsideWindow) as e:
                log.warning("skipping snapshot %s: %s", child, e.message)
                if manifest is not None and isinstance(e, ModelRejected):
                    self._refused[child.name] = manifest.digest
                continue
            if new:
                found.append(version)
        return found

    # --- resolving and loading --------------------------------------------------------------------

    def resolve(self, policy_version: int) -> VersionRecord:
        """The record of a servable version, or NOT_FOUND / FAILED_PRECONDITION."""
        record = self.registry.get(policy_version)
        if record is None:
            self.scan()  # it may have been written into the directory a moment ago
            record = self.registry.get(policy_version)
        window = self.window()
        if record is None:
            if window is not None and policy_version < window[0]:
                raise self._outside(policy_version)
            latest = "nothing published yet" if window is None else f"latest is {window[1]}"
            raise VersionNotFound(f"version {policy_version} was never published ({latest})")
        if record.state == VersionState.EVICTED or not self._kept(policy_version, window, self.leased()):
            raise self._outside(policy_version)
        return record

    # --- leases -----------------------------------------------------------------------------------

    def lease(self, policy_versions: list[int], holder: str, ttl_s: float) -> None:
        """Keeps servable versions past the window for `holder`; all or nothing."""
        if not holder:
            raise InvalidRequest("a lease needs a holder name")
        if not policy_versions:
            raise InvalidRequest("a lease needs at least one policy_version")
        with self._lock:  # so retention cannot evict a version between the check and the lease
            for v in policy_versions:
                self.resolve(v)
            # Only leased versions outlive the window, so bounding the leased set bounds what is kept.
            covered = self.leased() | set(policy_versions)
            if len(covered) > self.max_leased_versions:
                raise LeaseLimit(
                    f"leasing {sorted(policy_versions)} would put leases on {len(covered)} distinct versions; "
                    f"the limit is {self.max_leased_versions} (release versions no longer needed)"
                )
            for v in policy_versions:
                self.registry.lease(v, holder, ttl_s)

    def release(self, policy_versions: list[int], holder: str) -> None:
        with self._lock:
            for v in policy_versions:
                self.registry.release(v, holder)
            self.apply_retention()

    def load(self, record: VersionRecord, cache_key: str | None = None) -> CachedWeights:
        """Verified weights of a record, from the RAM cache or from disk."""
        key = cache_key or str(record.policy_version)
        cached = self.cache.get(key)
        if cached is not None and cached.digest == record.digest:
            return cached
        path = self.path_of(record)
        if not (path / MANIFEST_NAME).exists() and key != EWMA_KEY:
            self.resolve(record.policy_version)  # evicted since it was resolved: FAILED_PRECONDITION
            raise SnapshotCorrupt(f"{path} is gone although version {record.policy_version} is retained")
        manifest = read_manifest(path)
        if manifest.digest != record.digest:
            raise SnapshotCorrupt(
                f"{path} now has digest {manifest.digest}, but version {record.policy_version} was "
                f"published with {record.digest}; refusing to serve it"
            )
        state_dict = load_verified_weights(path, manifest)
        entry = CachedWeights(key=key, digest=record.digest, state_dict=state_dict, nbytes=state_dict_nbytes(state_dict))
        self.cache.put(entry)
        return entry

    def load_config(self, record: VersionRecord) -> dict[str, Any]:
        path = self.path_of(record)
        manifest = read_manifest(path)
        if manifest.digest != record.digest:
            raise SnapshotCorrupt(f"{path} changed since it was published (digest {manifest.digest})")
        return load_verified_config(path, manifest)

    def retained(self) -> list[VersionRecord]:
        window = self.window()
        if window is None:
            return []
        leased = self.leased()
        return [r for r in self.registry.list() if self._kept(r.policy_version, window, leased)]

    def with_state(self, record: VersionRecord, leased: set[int] | None = None) -> VersionRecord:
        window = self.window()
        if not self._kept(record.policy_version, window, self.leased() if leased is None else leased):
            return replace(record, state=VersionState.EVICTED)
        return record

"""Version → weights: publishing, the retention window, and verified loading through the RAM cache.

The store owns the snapshot directory and keeps the registry in step with it. It does not run models.

What is kept never depends on state a registry can lose: leases are also files beside the snapshots
(`leases.LeaseFiles`), the latest version is the newest snapshot directory, and a start-up recovery
rebuilds the registry from the directory and removes what killed writers and deleters left behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from logit_service.errors import (
    InvalidRequest,
    LeaseLimit,
    LogitServiceError,
    ModelRejected,
    RegistryError,
    SnapshotCorrupt,
    SnapshotUnreadable,
    VersionNotFound,
    VersionOutsideWindow,
)
from logit_service.registry.base import Registry
from logit_service.snapshots.cache import CachedWeights, WeightCache, state_dict_nbytes
from logit_service.snapshots.compaction import Compactor, compact_bases, materialise
from logit_service.snapshots.leases import LeaseFiles
from logit_service.snapshots.loader import (
    load_verified_config,
    load_verified_files,
    read_weights_file,
)
from logit_service.snapshots.manifest import (
    MANIFEST_NAME,
    Manifest,
    check_listed_files,
    parse_snapshot_dirname,
    read_manifest,
    snapshot_dirname,
    stored_file,
    verify_file,
)
from logit_service.types import EWMA_KEY, VersionRecord, VersionState

log = logging.getLogger(__name__)

MAX_SNAPSHOT_PATH_BYTES = 4096
"""Longest snapshot_path a publish may name (PATH_MAX on Linux)."""
MAX_NAME_BYTES = 255
"""Longest single name in a snapshot_path (NAME_MAX on Linux)."""
_MAX_SCAN_WARNINGS = 4096
# Directories a deleter renamed aside before removing them; whatever is left of one is garbage.
TRASH_PREFIX = ".trash-"
TMP_PREFIX = ".tmp-"
# A writer's .tmp-* directory untouched for this long belongs to a killed writer (a live one, on any host
# of the shared storage, keeps modifying the file it writes).
STALE_TMP_AGE_S = 3600.0
# After the registry failed, scoring uses the last records seen for this long before asking it again.
REGISTRY_RETRY_S = 2.0


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
        max_lease_holders: int = 1024,
        compact_keyframe_interval: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.registry = registry
        self.retention_window = retention_window
        self.delete_evicted = delete_evicted
        self.max_leased_versions = max_leased_versions
        self.max_lease_holders = max_lease_holders
        self.cache = WeightCache(cache_bytes)
        self._config_hash: str | None = None
        self._lock = threading.RLock()
        self.loads = 0  # verified loads from disk since start, their seconds and bytes (for the metrics)
        self.load_seconds = 0.0
        self.load_bytes = 0
        # (entry name, reason) pairs the scan already warned about: a bad entry is logged once, not
        # once a second for as long as it stays there.
        self._scan_warned: set[tuple[str, str]] = set()
        self.lease_files = LeaseFiles(self.root)
        # The last registry state seen, so versions already known keep being served while it is down.
        self._known: dict[int, VersionRecord] = {}
        self._known_latest: int | None = None
        self._known_ewma: VersionRecord | None = None
        self._registry_retry_at = 0.0
        self._unreadable: set[str] = set()  # directory names the scan skipped as unreadable
        # Called once per newly registered version, however it arrived (RPC, directory scan, lookup).
        self.on_published: Callable[[VersionRecord], None] | None = None
        # Called before a version is registered, outside the lock (it may build a model: seconds); a
        # LogitServiceError it raises refuses the publish, so a version no model can serve never appears.
        self.before_register: Callable[[VersionRecord], None] | None = None
        self._refused: dict[str, str] = {}  # scanned directory name → digest whose model was refused
        # With an interval, retained versions other than the newest and every interval-th are stored as
        # deltas from their newer neighbour (compaction.py); None stores every version full. Compact
        # versions left by an earlier run load either way.
        self.compactor = (
            Compactor(self, keyframe_interval=compact_keyframe_interval) if compact_keyframe_interval else None
        )
        # Without a shared disk: called with (version, expected digest or None) when a version this
        # replica should serve is not in its directory; copies it from a peer, returns whether it did.
        self.fetch_missing: Callable[[int, str | None], bool] | None = None

    @property
    def lock(self) -> threading.RLock:
        """Held while registering, evicting and switching a snapshot between its full and compact forms."""
        return self._lock

    def cached_file(self, dirname: str, name: str, sha256: str):
        """The verified bytes of a version's weights file when the RAM cache holds them, else None."""
        version = parse_snapshot_dirname(dirname)
        entry = self.cache.peek(str(version)) if version is not None else None
        if entry is None or name not in entry.files or entry.files[name][0] != sha256:
            return None
        return entry.files[name][1]

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
        if latest is not None:
            self._known_latest = max(latest, self._known_latest or 0)
        return self._window_of(latest)

    def _window_of(self, latest: int | None) -> tuple[int, int] | None:
        if latest is None:
            return None
        return max(latest - self.retention_window + 1, 0), latest

    def _kept(self, policy_version: int, window: tuple[int, int] | None, leased: set[int]) -> bool:
        return window is None or policy_version >= window[0] or policy_version in leased

    def leased(self) -> set[int]:
        """Versions with a live lease, in the registry or in the durable lease files."""
        return set(self.registry.leased_versions()) | self.lease_files.leased()

    def _kept_now(self, policy_version: int, window: tuple[int, int] | None) -> bool:
        """`_kept`, reading leases only for a version below the window, and only that version's."""
        if window is None or policy_version >= window[0]:
            return True
        return policy_version in self.registry.leased_versions() or self.lease_files.is_leased(policy_version)

    def _outside(self, policy_version: int, window: tuple[int, int] | None = None) -> VersionOutsideWindow:
        window = window or self.window()
        assert window is not None
        return VersionOutsideWindow(
            f"version {policy_version} is outside the retention window [{window[0]}, {window[1]}] "
            f"(K={self.retention_window}); its weights are no longer kept",
            **self._window_fields(policy_version, window),
        )

    def _window_fields(self, policy_version: int, window: tuple[int, int]) -> dict[str, int]:
        """What a VersionOutsideWindow error carries in its ErrorInfo metadata."""
        return {
            "limit": "retention_window", "limit_value": self.retention_window, "policy_version": policy_version,
            "oldest_retained_version": window[0], "latest_version": window[1],
        }

    # --- publishing -------------------------------------------------------------------------------

    def publish(
        self, policy_version: int, snapshot_path: str | Path, *, files_verified: bool = False
    ) -> tuple[VersionRecord, bool]:
        """Verifies and registers a snapshot directory; returns (record, newly_published).

        `files_verified`: every file was hashed against the manifest as it was written here (a streamed
        upload), so hashing them again is skipped; everything else is checked as for any publish."""
        self._fetch_if_missing(policy_version, snapshot_path)
        path = self._snapshot_dir(snapshot_path)
        manifest = read_manifest(path)
        if manifest.kind != "version":
            raise InvalidRequest(f"{path.name} holds a {manifest.kind!r} snapshot, not a policy version")
        if manifest.policy_version != policy_version:
            raise InvalidRequest(
                f"{path.name} holds version {manifest.policy_version}, but it was published as {policy_version}"
            )
        canonical = snapshot_dirname(policy_version)
        if path.name != canonical or path.parent.resolve() != self.root.resolve():
            # A restart rebuilds the registry by scanning the directory for these names: any other place
            # would be forgotten (and `latest` could move back).
            raise InvalidRequest(
                f"snapshot path {path} must be {canonical}/ directly in the snapshot directory {self.root} "
                f"(the name write_snapshot gives version {policy_version})"
            )
        check_listed_files(path, manifest)
        check_readable(path, manifest)
        if not files_verified:
            self._verify_files(path, manifest)
        try:
            record = self.record_for(path, manifest)
        except ValueError:  # replaced by a link out of the directory since it was checked
            raise InvalidRequest(f"snapshot path {snapshot_path} no longer lies inside the snapshot directory") from None
        return self._register(record)

    def _fetch_if_missing(self, policy_version: int, snapshot_path: str | Path) -> None:
        """A publish of a version's own directory name that this replica lacks: copied from a peer first."""
        if self.fetch_missing is None or str(snapshot_path) != snapshot_dirname(policy_version):
            return
        if not os.path.lexists(self.root / snapshot_dirname(policy_version)):
            self.fetch_missing(policy_version, None)

    def _fetch_record(self, record: VersionRecord) -> bool:
        """Copies a registered version this replica lacks from a peer; whether it is here now."""
        if self.fetch_missing is None or record.snapshot_path != snapshot_dirname(record.policy_version):
            return False  # not a version's own directory (the EWMA pseudo-version): nothing a peer has
        return self.fetch_missing(record.policy_version, record.digest) and (self.path_of(record) / MANIFEST_NAME).exists()

    def _verify_files(self, path: Path, manifest: Manifest) -> None:
        """Raises SnapshotCorrupt unless every listed file, full or compact, gives its manifest's sha256."""
        for name, expected in sorted(manifest.files.items()):
            if stored_file(path, name).name == name:
                verify_file(path, name, expected)
            else:
                read_weights_file(path / name, expected, self.cached_file)  # restored and checked

    def _snapshot_dir(self, snapshot_path: str | Path) -> Path:
        """The directory a publish names, checked before anything in it is read.

        A name relative to the snapshot dir (or an absolute path under it), without NUL bytes, `.`/`..`
        or hidden names, within PATH_MAX/NAME_MAX; every directory on the way a real one, never a
        symbolic link, so what is published and read lies inside the snapshot directory.
        """
        text = str(snapshot_path)
        if "\0" in text:
            raise InvalidRequest("snapshot_path contains a NUL byte")
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > MAX_SNAPSHOT_PATH_BYTES:
            raise InvalidRequest(f"snapshot_path is {size} bytes long; the limit is {MAX_SNAPSHOT_PATH_BYTES}")
        path = Path(text)
        relative = path
        if path.is_absolute():
            bases = (Path(os.path.abspath(self.root)), self.root.resolve())
            relative = next((path.relative_to(b) for b in bases if path.is_relative_to(b)), None)
            if relative is None:
                # The server reads and hashes what a publish names: keep that to its own snapshot directory.
                raise InvalidRequest(f"snapshot path {text} lies outside this server's snapshot directory {self.root}")
        if not relative.parts:
            raise InvalidRequest("snapshot_path names the snapshot directory itself, not a snapshot inside it")
        for part in relative.parts:
            if part == "..":
                raise InvalidRequest(f"snapshot path {text} lies outside this server's snapshot directory {self.root}")
            if len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
                raise InvalidRequest(f"snapshot_path holds a name longer than {MAX_NAME_BYTES} bytes")
            if part.startswith("."):
                raise InvalidRequest(f"snapshot_path names {part!r}; hidden and in-progress directories are not snapshots")
        current = self.root
        for part in relative.parts:
            current = current / part
            try:
                mode = os.lstat(current).st_mode
            except OSError:
                raise InvalidRequest(f"snapshot path {relative} is not a directory this server can read") from None
            if stat.S_ISLNK(mode):
                raise InvalidRequest(
                    f"snapshot path {relative}: {part} is a symbolic link; snapshots must be real directories "
                    "inside the snapshot directory"
                )
            if not stat.S_ISDIR(mode):
                raise InvalidRequest(f"snapshot path {relative} is not a directory this server can read")
        return current

    def _register(self, record: VersionRecord) -> tuple[VersionRecord, bool]:
        if self.before_register is not None:
            self.before_register(record)
        with self._lock:
            self._check_model(record)
            window = self.window()
            if window is not None and record.policy_version < window[0]:
                raise VersionOutsideWindow(
                    f"version {record.policy_version} is older than the retention window "
                    f"[{window[0]}, {window[1]}] (K={self.retention_window}); it would be evicted at once",
                    **self._window_fields(record.policy_version, window),
                )
            new = self.registry.publish(record)
            self.apply_retention()
            stored = self.registry.get(record.policy_version) or record
            self._remember(stored)
        if new and self.on_published is not None:
            self.on_published(stored)
        if new and self.compactor is not None:
            self.compactor.request()  # the previous newest now has a newer neighbour
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
        records = self.registry.list()
        for record in records:
            self._remember(record)
        doomed = [r for r in records if not self._kept(r.policy_version, window, leased)]
        if not doomed:
            return []
        # Decided in the registry first: a kill before the deletion leaves a directory that recovery
        # (`remove_leftovers`) deletes, never a record that names a missing directory as retained.
        self.registry.mark_evicted([r.policy_version for r in doomed])
        self._detach_from({self.path_of(r).name for r in doomed})
        for record in doomed:
            self._known.pop(record.policy_version, None)
            self.cache.drop(str(record.policy_version))
            path = self.path_of(record)
            if self.delete_evicted and path.parent.resolve() == self.root.resolve():
                self.remove_dir(path)
        log.info("evicted versions %s (window %s)", [r.policy_version for r in doomed], window)
        return [r.policy_version for r in doomed]

    def _detach_from(self, doomed: set[str]) -> None:
        """Makes full again every kept version stored as a delta from a directory about to be deleted
        (a leased version outside the window whose newer neighbour is evicted), so none loses its base."""
        if not doomed or not self.delete_evicted:
            return
        leased = self.leased()
        window = self.window()
        for record in self.registry.list():
            if not self._kept(record.policy_version, window, leased) or self.path_of(record).name in doomed:
                continue
            path = self.path_of(record)
            try:
                if compact_bases(path, read_manifest(path)) & doomed:
                    materialise(self, record)
            except LogitServiceError as e:
                log.error("version %d loses its delta base %s: %s", record.policy_version, sorted(doomed), e.message)

    def materialise(self, policy_version: int) -> Path:
        """A retained version's snapshot as a plain Hugging Face directory (config.json and full
        *.safetensors), for engines that load a path: restored from its compact form if need be."""
        record = self.resolve(policy_version)
        return materialise(self, record)

    def remove_dir(self, path: Path) -> None:
        """Deletes a snapshot directory: renamed aside first (atomic), so a kill halfway through leaves
        a `.trash-*` directory that recovery removes, never a half-deleted snapshot under its own name."""
        trash = self.root / f"{TRASH_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return  # another replica deleted it first
        shutil.rmtree(trash, ignore_errors=True)

    # --- start-up recovery ------------------------------------------------------------------------

    def recover(self) -> None:
        """Brings registry and directory back in step after a restart, a registry wipe or a crash:
        registers every snapshot directory, re-applies retention (leases are durable files, so nothing
        leased is lost), and removes crash leftovers."""
        self.scan()
        self.apply_retention()
        self.remove_leftovers()

    def remove_leftovers(self) -> list[str]:
        """Removes what killed processes left: half-deleted `.trash-*` directories, `.tmp-*` directories
        of writers idle for STALE_TMP_AGE_S, and (with delete_evicted) directories of versions that are
        evicted or older than the window without a lease. Returns the names removed."""
        removed = []
        window = self.window()
        leased = self.leased() if window is not None else set()
        for child in sorted(self.root.iterdir()):
            name = child.name
            if name.startswith(TRASH_PREFIX):
                _remove_any(child)
            elif name.startswith(TMP_PREFIX):
                if not _idle_for(child, STALE_TMP_AGE_S):
                    continue
                _remove_any(child)
            else:
                version = parse_snapshot_dirname(name)
                if version is None or not self.delete_evicted or not child.is_dir() or window is None:
                    continue
                record = self.registry.get(version)
                evicted = record is not None and record.state == VersionState.EVICTED
                forgotten = record is None and version < window[0] and version not in leased
                if not (evicted or forgotten):
                    continue
                self._detach_from({name})
                self.remove_dir(child)
            removed.append(name)
        self.lease_files.remove_stale(STALE_TMP_AGE_S)
        if removed:
            log.info("removed leftovers %s from %s", removed, self.root)
        return removed

    def scan(self) -> list[int]:
        """Registers version directories written straight into the snapshot dir; returns new ones.

        Scanning checks manifests and that the files they list are regular files, without reading
        them; file digests are checked when weights are loaded. One bad entry (a link, a damaged
        manifest, anything) is skipped with a warning: it never stops the scan or start-up. Only an
        unreachable registry, which no entry can cause, propagates.
        """
        found = []
        with os.scandir(self.root) as listing:
            entries = sorted(listing, key=lambda e: e.name)
        for entry in entries:
            version = parse_snapshot_dirname(entry.name)
            if version is None:
                continue
            try:
                new = self._scan_entry(entry, version)
            except RegistryError:
                raise
            except LogitServiceError as e:
                self._scan_warning(entry.name, e.message)
                continue
            except Exception as e:  # broad on purpose: the directory is untrusted input
                self._scan_warning(entry.name, f"{type(e).__name__}: {e}", exc_info=True)
                continue
            if new:
                found.append(version)
        return found

    def _scan_entry(self, entry: os.DirEntry, version: int) -> bool:
        """Registers one v<version> entry of the snapshot dir; returns whether it was new."""
        if entry.is_symlink():
            raise InvalidRequest("it is a symbolic link; snapshots must be real directories inside the snapshot directory")
        if not entry.is_dir(follow_symlinks=False):
            return False
        if self.registry.get(version) is not None:
            return False
        window = self.window()
        if window is not None and version < window[0]:
            return False
        path = self.root / entry.name
        manifest = read_manifest(path)
        if manifest.policy_version != version or manifest.kind != "version":
            raise InvalidRequest(f"its manifest names {manifest.kind} {manifest.policy_version}")
        check_listed_files(path, manifest)
        if not self._readable(path, manifest):
            return False
        if self._refused.get(entry.name) == manifest.digest:
            return False  # its model was refused with these very files: building it again would not help
        try:
            _, new = self._register(self.record_for(path, manifest))
        except ModelRejected:
            self._refused[entry.name] = manifest.digest
            raise
        return new

    def _scan_warning(self, name: str, reason: str, *, exc_info: bool = False) -> None:
        key = (name, reason)
        if key in self._scan_warned:
            return
        if len(self._scan_warned) >= _MAX_SCAN_WARNINGS:
            self._scan_warned.clear()
        self._scan_warned.add(key)
        log.warning("skipping snapshot %s in %s: %s", name, self.root, reason, exc_info=exc_info)

    def _readable(self, path: Path, manifest: Manifest) -> bool:
        """Whether the scan may register `path`; says why not once per directory, not once per scan."""
        try:
            check_readable(path, manifest)
        except SnapshotUnreadable as e:
            if path.name not in self._unreadable:
                log.warning("not registering %s: %s", path, e.message)
            self._unreadable.add(path.name)
            return False
        self._unreadable.discard(path.name)
        return True

    # --- resolving and loading --------------------------------------------------------------------

    def resolve(self, policy_version: int) -> VersionRecord:
        """The record of a servable version, or NOT_FOUND / FAILED_PRECONDITION.

        While the registry is unreachable, versions seen before are resolved from their last records,
        the last latest version and the lease files; others answer UNAVAILABLE. Nothing is published or
        evicted through a replica that cannot reach the registry, and answers stay exact whatever the
        view (weights are checked against the record's digest); at worst a replica cut off alone serves a
        version that others evicted meanwhile, from its RAM cache, until it sees the registry again.
        """
        failure: RegistryError | None = None
        if time.monotonic() >= self._registry_retry_at:
            try:
                return self._resolve_from_registry(policy_version)
            except RegistryError as e:
                self._registry_retry_at = time.monotonic() + REGISTRY_RETRY_S
                log.warning(
                    "registry unreachable; resolving version %d from the last records seen: %s", policy_version, e.message
                )
                failure = e
        return self._resolve_from_last_seen(policy_version, failure)

    def _resolve_from_last_seen(self, policy_version: int, failure: RegistryError | None) -> VersionRecord:
        window = self._window_of(self._known_latest)
        record = self._known.get(policy_version)
        below = window is not None and policy_version < window[0]
        if below and not self.lease_files.is_leased(policy_version):
            raise self._outside(policy_version, window)
        if record is None or record.state == VersionState.EVICTED:
            raise RegistryError(
                f"the registry is unreachable and version {policy_version} is not among the versions this "
                f"replica has seen" + (f": {failure.message}" if failure is not None else "")
            )
        return record

    def _remember(self, record: VersionRecord) -> None:
        if record.state == VersionState.EVICTED:
            self._known.pop(record.policy_version, None)
        else:
            self._known[record.policy_version] = record

    def ewma_record(self) -> VersionRecord | None:
        """The EWMA pseudo-version's record; the last one seen while the registry is unreachable."""
        try:
            self._known_ewma = self.registry.get_ewma()
        except RegistryError:
            if self._known_ewma is None:
                raise
        return self._known_ewma

    def _resolve_from_registry(self, policy_version: int) -> VersionRecord:
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
        self._remember(record)
        if record.state == VersionState.EVICTED or not self._kept_now(policy_version, window):
            raise self._outside(policy_version)
        return record

    # --- leases -----------------------------------------------------------------------------------

    def lease(self, policy_versions: list[int], holder: str, ttl_s: float) -> None:
        """Keeps servable versions past the window for `holder`. Nothing is leased unless every version
        is servable and the distinct-version bound holds; a version already held by `max_lease_holders`
        others refuses a new holder (LeaseLimit), after the versions before it in the call."""
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
                    f"the limit is {self.max_leased_versions} (release versions no longer needed)",
                    limit="max_leased_versions", limit_value=self.max_leased_versions, value=len(covered),
                )
            for v in policy_versions:
                # The registry first: while it is down the call fails (UNAVAILABLE) and leaves no file.
                self.registry.lease(v, holder, ttl_s, max_holders=self.max_lease_holders)
                self.lease_files.take(v, holder, ttl_s)

    def release(self, policy_versions: list[int], holder: str) -> None:
        with self._lock:
            for v in policy_versions:
                self.registry.release(v, holder)
                self.lease_files.release(v, holder)
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
        if not (path / MANIFEST_NAME).exists() and key != EWMA_KEY and not self._fetch_record(record):
            if time.monotonic() < self._registry_retry_at:  # resolved from an old view: most likely evicted
                raise RegistryError(
                    f"{path} is gone and the registry is unreachable, so whether version "
                    f"{record.policy_version} was evicted cannot be told; another replica may answer"
                )
            raise SnapshotCorrupt(f"{path} is gone although version {record.policy_version} is retained")
        manifest = read_manifest(path)
        if manifest.digest != record.digest:
            raise SnapshotCorrupt(
                f"{path.name}: its manifest changed since version {record.policy_version} was published; "
                "refusing to serve it"
            )
        started = time.perf_counter()
        try:
            # config.json too, not only the weights: once the model is built from an earlier version's
            # config, a changed byte here would otherwise never be read again.
            load_verified_config(path, manifest)
            state_dict, files = load_verified_files(path, manifest, self.cached_file)
        except PermissionError as e:
            raise SnapshotUnreadable(f"{e.filename} cannot be read by this server: {e.strerror}") from None
        entry = CachedWeights(
            key=key, digest=record.digest, state_dict=state_dict, nbytes=state_dict_nbytes(state_dict), files=files
        )
        self.loads += 1
        self.load_seconds += time.perf_counter() - started
        self.load_bytes += entry.nbytes
        self.cache.put(entry)
        return entry

    def load_config(self, record: VersionRecord) -> dict[str, Any]:
        path = self.path_of(record)
        if not (path / MANIFEST_NAME).exists():
            self._fetch_record(record)
        manifest = read_manifest(path)
        if manifest.digest != record.digest:
            raise SnapshotCorrupt(f"{path.name}: its manifest changed since it was published; refusing to serve it")
        try:
            return load_verified_config(path, manifest)
        except PermissionError as e:
            raise SnapshotUnreadable(f"{e.filename} cannot be read by this server: {e.strerror}") from None

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


def check_readable(path: Path, manifest: Manifest) -> None:
    """Raises SnapshotUnreadable unless this process may open every file the manifest lists (a snapshot
    written by another user with mode 0600 must not be registered, only to fail on every load)."""
    for name in sorted(manifest.files):
        try:
            # Without following links or waiting on a FIFO: the snapshot directory is untrusted input.
            os.close(os.open(stored_file(path, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK))
        except FileNotFoundError:
            continue  # verification reports a missing file as corrupt
        except PermissionError as e:
            raise SnapshotUnreadable(
                f"{Path(path) / name} cannot be read by this server (uid {os.geteuid()}): {e.strerror}; "
                f"snapshot files must be readable by the serving user (write_snapshot makes them 0644)"
            ) from None


def _idle_for(path: Path, age_s: float) -> bool:
    """True when neither `path` nor anything directly in it was modified in the last `age_s` seconds."""
    try:
        newest = path.stat().st_mtime
        for entry in os.scandir(path):
            newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    except FileNotFoundError:
        return False  # gone already, or renamed into place by its writer
    except NotADirectoryError:
        pass
    return time.time() - newest > age_s


def _remove_any(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)

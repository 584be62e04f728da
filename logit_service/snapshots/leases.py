"""Durable version leases: one small file per lease under `<snapshot dir>/.leases/`, beside the snapshots.

Registries can lose state (an in-process registry on restart, a Redis without persistence), the shared
snapshot directory cannot lose a lease without losing the snapshot too; retention consults these files
as well as the registry, so no lost registry state lets it delete a leased version. It owns the lease
files only; the store decides what the leases keep.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from pathlib import Path

from logit_service.snapshots.manifest import fsync_dir, parse_snapshot_dirname, snapshot_dirname

log = logging.getLogger(__name__)

LEASES_DIRNAME = ".leases"
# A lapsed file is removed only this long after its expiry, so that hosts whose clocks disagree by less
# never remove a lease another host still counts as live.
_REMOVE_AFTER_S = 60.0
_RENAME_ATTEMPTS = 3


def _holder_id(holder: str) -> str:
    # Holder names are arbitrary strings; a hash keeps them out of file names.
    return hashlib.sha256(holder.encode()).hexdigest()[:32]


class LeaseFiles:
    """Leases as files `v<version>/<holder hash>/<expiry in ms since the epoch>`.

    The path is an index: taking, renewing or releasing one holder's lease touches that holder's
    directory only, and asking whether a version is leased reads that version's directory only, so no
    call walks every lease. A file's name never changes once written: a renewal writes a new file and
    then removes the same holder's files that expire earlier, so two replicas renewing one lease at once
    always leave the later expiry standing, and a cleaner removing a lapsed file can never remove a
    renewal. Expiry is the wall clock of the replica that took the lease (hosts are assumed
    NTP-synchronised; the registry's lease on the Redis clock covers the normal case, these files cover
    lost registry state). Files of the earlier flat layout, `v<version>.<holder hash>.<expiry>`
    directly in `.leases/`, are still honoured and released.
    """

    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / LEASES_DIRNAME

    def take(self, policy_version: int, holder: str, ttl_s: float) -> None:
        """Creates or renews `holder`'s lease on a version until now + ttl_s."""
        if ttl_s <= 0:
            raise ValueError(f"lease ttl_s must be positive, got {ttl_s}")
        _make_dir(self.dir)
        expires_ms = int((time.time() + ttl_s) * 1000)
        body = json.dumps({"policy_version": int(policy_version), "holder": holder, "expires_at_ms": expires_ms})
        tmp = self.dir / f".tmp-{uuid.uuid4().hex}"
        with open(tmp, "w") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        holder_dir = self._holder_dir(policy_version, holder)
        for attempt in range(_RENAME_ATTEMPTS):
            try:
                _make_dir(holder_dir.parent)
                _make_dir(holder_dir)
                os.rename(tmp, holder_dir / str(expires_ms))
                break
            except FileNotFoundError:  # a cleaner removed an empty directory between the steps
                if attempt == _RENAME_ATTEMPTS - 1:
                    raise
        fsync_dir(holder_dir)
        for name in _listdir(holder_dir):
            if name.isdigit() and int(name) < expires_ms:
                _remove(holder_dir / name)

    def release(self, policy_version: int, holder: str) -> None:
        """Ends `holder`'s lease on a version (a no-op when it holds none)."""
        holder_dir = self._holder_dir(policy_version, holder)
        for name in _listdir(holder_dir):
            _remove(holder_dir / name)
        _remove_empty_dir(holder_dir)
        _remove_empty_dir(holder_dir.parent)
        prefix = f"{snapshot_dirname(policy_version)}.{_holder_id(holder)}."
        for name, _, _ in self._flat_entries():
            if name.startswith(prefix):
                _remove(self.dir / name)

    def is_leased(self, policy_version: int) -> bool:
        """Whether any holder's lease file on this version is live; reads this version's files only."""
        now_ms = time.time() * 1000
        version_dir = self.dir / snapshot_dirname(policy_version)
        for holder in _listdir(version_dir):
            if any(name.isdigit() and int(name) > now_ms for name in _listdir(version_dir / holder)):
                return True
        return any(v == policy_version and expiry > now_ms for _, v, expiry in self._flat_entries())

    def leased(self) -> set[int]:
        """Versions with at least one live lease file (each version read until its first live one)."""
        now_ms = time.time() * 1000
        live = {v for _, v, expiry in self._flat_entries() if expiry > now_ms}
        for name in _listdir(self.dir):
            version = parse_snapshot_dirname(name)
            if version is not None and version not in live and self.is_leased(version):
                live.add(version)
        return live

    def remove_stale(self, max_age_s: float) -> None:
        """Removes half-written lease files of killed processes (a live writer finishes in milliseconds),
        files that lapsed long ago and the directories they leave empty."""
        now_ms = time.time() * 1000
        for name in _listdir(self.dir):
            path = self.dir / name
            if name.startswith(".tmp-"):
                try:
                    if time.time() - os.stat(path).st_mtime > max_age_s:
                        _remove(path)
                except FileNotFoundError:
                    pass
                continue
            if parse_snapshot_dirname(name) is None:
                continue
            for holder in _listdir(path):
                for expiry in _listdir(path / holder):
                    if expiry.isdigit() and int(expiry) < now_ms - _REMOVE_AFTER_S * 1000:
                        _remove(path / holder / expiry)
                _remove_empty_dir(path / holder)
            _remove_empty_dir(path)
        for name, _, expiry in self._flat_entries():
            if expiry < now_ms - _REMOVE_AFTER_S * 1000:
                _remove(self.dir / name)

    def _holder_dir(self, policy_version: int, holder: str) -> Path:
        return self.dir / snapshot_dirname(policy_version) / _holder_id(holder)

    def _flat_entries(self) -> list[tuple[str, int, int]]:
        """Lease files of the earlier flat layout."""
        entries = []
        for name in _listdir(self.dir):
            parts = name.split(".")
            if len(parts) != 3 or not parts[2].isdigit():
                continue  # a version directory, a lease being written (.tmp-*) or something not ours
            version = parse_snapshot_dirname(parts[0])
            if version is not None:
                entries.append((name, version, int(parts[2])))
        return entries


def _make_dir(path: Path) -> None:
    if not path.is_dir():
        path.mkdir(exist_ok=True)
        os.chmod(path, 0o755)  # replicas running as other users read the leases too; umask aside


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass  # another replica removed it first


def _remove_empty_dir(path: Path) -> None:
    try:
        os.rmdir(path)  # only ever succeeds on an empty directory: a renewal's file is never lost
    except OSError:
        pass

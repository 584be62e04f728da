"""Durable version leases: one small file per lease in `<snapshot dir>/.leases/`, beside the snapshots.

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


def _holder_id(holder: str) -> str:
    # Holder names are arbitrary strings; a hash keeps them out of file names.
    return hashlib.sha256(holder.encode()).hexdigest()[:32]


class LeaseFiles:
    """Leases as files named `v<version>.<holder hash>.<expiry in ms since the epoch>`.

    A file's name never changes once written: a renewal writes a new file and then removes the same
    holder's files that expire earlier, so two replicas renewing one lease at once always leave the later
    expiry standing, and a cleaner removing a lapsed file can never remove a renewal. Expiry is the wall
    clock of the replica that took the lease (hosts are assumed NTP-synchronised; the registry's lease on
    the Redis clock covers the normal case, these files cover lost registry state).
    """

    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / LEASES_DIRNAME

    def take(self, policy_version: int, holder: str, ttl_s: float) -> None:
        """Creates or renews `holder`'s lease on a version until now + ttl_s."""
        if ttl_s <= 0:
            raise ValueError(f"lease ttl_s must be positive, got {ttl_s}")
        if not self.dir.is_dir():
            self.dir.mkdir(exist_ok=True)
            os.chmod(self.dir, 0o755)  # replicas running as other users read the leases too; umask aside
        expires_ms = int((time.time() + ttl_s) * 1000)
        prefix = f"{snapshot_dirname(policy_version)}.{_holder_id(holder)}."
        body = json.dumps({"policy_version": int(policy_version), "holder": holder, "expires_at_ms": expires_ms})
        tmp = self.dir / f".tmp-{uuid.uuid4().hex}"
        with open(tmp, "w") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.rename(tmp, self.dir / f"{prefix}{expires_ms}")
        fsync_dir(self.dir)
        for name, _, expiry in self._entries():
            if name.startswith(prefix) and expiry < expires_ms:
                self._remove(name)

    def release(self, policy_version: int, holder: str) -> None:
        """Ends `holder`'s lease on a version (a no-op when it holds none)."""
        prefix = f"{snapshot_dirname(policy_version)}.{_holder_id(holder)}."
        for name, _, _ in self._entries():
            if name.startswith(prefix):
                self._remove(name)

    def leased(self) -> dict[int, float]:
        """Versions with at least one live lease file → seconds until the last of them expires."""
        now_ms = time.time() * 1000
        out: dict[int, float] = {}
        for name, version, expiry in self._entries():
            if expiry > now_ms:
                out[version] = max(out.get(version, 0.0), (expiry - now_ms) / 1000.0)
            elif expiry < now_ms - _REMOVE_AFTER_S * 1000:
                self._remove(name)
        return out

    def remove_stale(self, max_age_s: float) -> None:
        """Removes half-written lease files of killed processes (a live writer finishes in milliseconds)."""
        try:
            names = [n for n in os.listdir(self.dir) if n.startswith(".tmp-")]
        except FileNotFoundError:
            return
        for name in names:
            try:
                if time.time() - os.stat(self.dir / name).st_mtime > max_age_s:
                    self._remove(name)
            except FileNotFoundError:
                pass

    def _entries(self) -> list[tuple[str, int, int]]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        entries = []
        for name in names:
            parts = name.split(".")
            if len(parts) != 3 or not parts[2].isdigit():
                continue  # a lease being written (.tmp-*) or something that is not ours
            version = parse_snapshot_dirname(parts[0])
            if version is not None:
                entries.append((name, version, int(parts[2])))
        return entries

    def _remove(self, name: str) -> None:
        try:
            os.unlink(self.dir / name)
        except FileNotFoundError:
            pass  # another replica removed it first

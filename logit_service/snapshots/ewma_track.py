"""The EWMA pseudo-version: every published version folded into a bias-corrected EWMA of weights.

θ̄_n = Σ_i β^{n−i} θ_i / Σ_i β^{n−i} (PPO-EWMA, Hilton, Cobbe & Schulman 2021, arXiv 2110.00641).
It is stored like a snapshot (`ewma-v<newest folded>/`: servable model.safetensors holding θ̄, plus
the running sums so a restarted server continues the same average) and registered under the EWMA key.
"""

from __future__ import annotations

import logging
from pathlib import Path

from logit_common.ewma import DebiasedEWMA
from logit_service.errors import VersionConflict
from logit_service.snapshots.manifest import parse_snapshot_dirname, read_manifest, snapshot_dirname
from logit_service.snapshots.loader import read_verified_buffer, tensors_from_safetensors_buffer
from logit_service.snapshots.store import SnapshotStore
from logit_service.snapshots.writer import write_snapshot
from logit_service.types import VersionRecord

log = logging.getLogger(__name__)

SUMS_NAME = "ewma_sums.safetensors"
EWMA_DIR_PREFIX = "ewma-"
# Versions whose share of the average falls below this are no longer listed as covered.
_COVER_MIN_WEIGHT = 1e-4


class EwmaTrack:
    def __init__(self, store: SnapshotStore, *, beta: float) -> None:
        self.store = store
        self.beta = beta
        self._ewma: DebiasedEWMA | None = None
        self._folded: list[int] = []
        self._restore()

    @property
    def folded_versions(self) -> list[int]:
        return list(self._folded)

    def _restore(self) -> None:
        """Resumes from the registered EWMA snapshot, or the newest one on disk, which it then registers
        (the registry starts empty or lost it), so fallbacks answer without waiting for a publish."""
        record = self.store.registry.get_ewma()
        if record is not None and self._adopt(self.store.path_of(record)):
            return
        for path in sorted(self.store.root.glob(EWMA_DIR_PREFIX + "v*"), reverse=True):
            if self._adopt(path):
                record = self.store.record_for(path, read_manifest(path))
                self.store.registry.put_ewma(record)
                log.info("registered the EWMA snapshot %s", path)
                self._remove_older(record.policy_version)
                return

    def _remove_older(self, newest: int) -> None:
        """Deletes EWMA snapshots older than the registered one (left by a restart or a registry wipe)."""
        for path in self.store.root.glob(EWMA_DIR_PREFIX + "v*"):
            folded = parse_snapshot_dirname(path.name.removeprefix(EWMA_DIR_PREFIX))
            if folded is not None and folded < newest and path.is_dir():
                self.store.remove_dir(path)

    def _adopt(self, path: Path) -> bool:
        """Takes over the average stored at `path` (ours from before a restart, or another replica's)."""
        try:
            manifest = read_manifest(path)
            sums_path = path / SUMS_NAME
            sums = tensors_from_safetensors_buffer(read_verified_buffer(sums_path, manifest.files[SUMS_NAME]), sums_path)
            ewma = DebiasedEWMA.from_state(dict(manifest.extra["ewma_state"], sums=sums))
            folded = [int(v) for v in manifest.extra["folded_versions"]]
        except Exception as e:  # a damaged EWMA is rebuilt from the next versions, never served
            log.warning("cannot resume EWMA from %s: %s", path, e)
            return False
        if ewma.beta != self.beta:
            log.warning("EWMA at %s uses β=%s, this server β=%s; starting a new average", path, ewma.beta, self.beta)
            return False
        self._ewma, self._folded = ewma, folded
        log.info("resumed EWMA over versions …%s from %s", folded[-5:], path)
        return True

    def _sync_from_registry(self) -> None:
        """With replicas sharing a registry, whoever folds a version first publishes the average; the
        others adopt it instead of keeping diverging averages of the versions each happened to see."""
        record = self.store.registry.get_ewma()
        if record is None:
            if self._folded:  # we hold an average, so the registry lost its record (a wipe): put it back
                self._restore()
            return
        newest = self._folded[-1] if self._folded else -1
        if record.policy_version > newest:  # an EWMA record's version is the newest version folded in
            self._adopt(self.store.path_of(record))

    def catch_up(self) -> list[int]:
        """Folds retained versions newer than the average: written while the server was down, or
        registered by another replica."""
        self._sync_from_registry()
        newest = self._folded[-1] if self._folded else -1
        pending = [r for r in self.store.retained() if r.policy_version > newest]
        for record in pending:
            self.fold(record)
        return [r.policy_version for r in pending]

    def fold(self, record: VersionRecord) -> VersionRecord | None:
        """Folds one newly published version in and publishes the new average; returns its record."""
        v = record.policy_version
        self._sync_from_registry()
        if self._folded and v <= self._folded[-1]:
            return None  # already folded, or arrived out of order: the average only moves forward
        weights = self.store.load(record)
        if self._ewma is None or self._ewma.beta != self.beta:
            self._ewma = DebiasedEWMA(self.beta)
            self._folded = []
        self._ewma.fold(weights.state_dict)
        self._folded.append(v)
        return self._publish(record, {k: t.dtype for k, t in weights.state_dict.items()})

    def _covers(self) -> tuple[int, ...]:
        n = len(self._folded)
        z = self._ewma.weight_sum
        return tuple(
            v for i, v in enumerate(self._folded) if i == n - 1 or self.beta ** (n - 1 - i) / z >= _COVER_MIN_WEIGHT
        )

    def _publish(self, source: VersionRecord, dtypes: dict) -> VersionRecord:
        state = self._ewma.state()
        sums = state.pop("sums")
        average = {k: t.to(dtypes[k]) for k, t in self._ewma.average().items()}
        newest = self._folded[-1]
        dirname = EWMA_DIR_PREFIX + snapshot_dirname(newest)
        try:
            path = self._write(source, newest, average, sums, state, dirname)
        except VersionConflict:
            # Another replica folded a different history into this version first: first writer wins.
            path = self.store.root / dirname
            if not self._adopt(path):
                raise
            log.warning("adopted the EWMA another replica wrote at %s", path)
        record = self.store.record_for(path, read_manifest(path))
        previous = self.store.registry.get_ewma()
        if previous is not None and previous.policy_version > newest:
            return previous  # another replica is already further along; never move the record back
        self.store.registry.put_ewma(record)
        self._remove_older(newest)
        log.info("EWMA now covers versions %s (β=%.3f)", list(record.covers_versions), self.beta)
        return record

    def _write(self, source: VersionRecord, newest: int, average: dict, sums: dict, state: dict, dirname: str) -> Path:
        from safetensors.torch import save

        return write_snapshot(
            self.store.root,
            newest,
            average,
            self.store.load_config(source),
            kind="ewma",
            covers_versions=self._covers(),
            dirname=dirname,
            extra_files={SUMS_NAME: save(sums)},
            extra={"ewma_state": state, "folded_versions": self._folded[-1024:], "beta": self.beta},
        )

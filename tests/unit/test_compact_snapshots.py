"""Compact snapshots: deltas restore every version bit for bit, damaged ones fail clearly, nothing is lost."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from logit_service.demo.tiny_model import build_tiny_model, sgd_step
from logit_service.errors import SnapshotCorrupt
from logit_service.registry.memory import InMemoryRegistry
from logit_service.snapshots import compaction
from logit_service.snapshots.compact import compact_name, encode_delta, read_delta
from logit_service.snapshots.loader import read_weights_file
from logit_service.snapshots.manifest import read_manifest, snapshot_dirname
from logit_service.snapshots.store import SnapshotStore
from logit_service.snapshots.writer import WEIGHTS_NAME, write_snapshot

NUM_VERSIONS = 6
KEYFRAME = 4  # versions 0 and 4 stay full; 5 is the newest


@pytest.fixture(scope="module")
def trained() -> tuple[dict, list[dict[str, torch.Tensor]]]:
    """Versions of one model after real AdamW steps at an RL learning rate, plus a bf16 buffer."""
    model = build_tiny_model(seed=0, vocab_size=256, hidden_size=32, layers=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    generator = torch.Generator().manual_seed(0)
    states = []
    for _ in range(NUM_VERSIONS):
        state = {k: t.detach().clone() for k, t in model.state_dict().items()}
        state["extra.bf16"] = state["model.norm.weight"].to(torch.bfloat16)  # a second dtype in one file
        states.append(state)
        sgd_step(model, optimizer, torch.randint(0, 256, (2, 16), generator=generator))
    return model.config.to_dict(), states


def _store(root: Path, **kwargs) -> SnapshotStore:
    kwargs.setdefault("compact_keyframe_interval", KEYFRAME)
    return SnapshotStore(root, InMemoryRegistry(), retention_window=NUM_VERSIONS, cache_bytes=0, **kwargs)


def _publish(store: SnapshotStore, trained, versions=range(NUM_VERSIONS)) -> None:
    config, states = trained
    for v in versions:
        store.publish(v, write_snapshot(store.root, v, states[v], config))


def _equal(actual: dict, expected: dict) -> bool:
    return set(actual) == set(expected) and all(
        actual[k].dtype == expected[k].dtype and torch.equal(actual[k].view(torch.uint8), expected[k].view(torch.uint8))
        for k in expected
    )


@pytest.fixture
def compacted(tmp_path, trained) -> SnapshotStore:
    store = _store(tmp_path / "snapshots")
    _publish(store, trained)
    assert store.compactor.run_once() == [1, 2, 3]
    return store


def test_versions_between_keyframes_are_stored_as_deltas_and_the_rest_stay_full(compacted):
    for v in range(NUM_VERSIONS):
        path = compacted.root / snapshot_dirname(v)
        full, delta = (path / WEIGHTS_NAME).exists(), (path / compact_name(WEIGHTS_NAME)).exists()
        assert (full, delta) == ((False, True) if v in (1, 2, 3) else (True, False)), v
        if delta:
            header, _ = read_delta(path / compact_name(WEIGHTS_NAME))
            assert header.base == snapshot_dirname(v + 1)  # a newer neighbour: eviction never takes it first


def test_every_compact_version_loads_bit_for_bit_under_its_published_digest(compacted, trained):
    _, states = trained
    for v in range(NUM_VERSIONS):
        record = compacted.resolve(v)
        assert record.digest == read_manifest(compacted.root / snapshot_dirname(v)).digest
        assert _equal(compacted.load(record).state_dict, states[v]), v


def test_a_restore_starts_from_a_newer_version_held_in_ram(tmp_path, trained):
    store = SnapshotStore(tmp_path / "s", InMemoryRegistry(), retention_window=NUM_VERSIONS, cache_bytes=1 << 30,
                          compact_keyframe_interval=KEYFRAME)  # fmt: skip
    _publish(store, trained)
    store.compactor.run_once()
    store.load(store.resolve(4))
    (store.root / snapshot_dirname(4) / WEIGHTS_NAME).rename(tmp_path / "aside")  # only the RAM copy is left
    assert _equal(store.load(store.resolve(3)).state_dict, trained[1][3])


def test_compact_deltas_are_smaller_than_the_full_file(compacted):
    full = (compacted.root / snapshot_dirname(4) / WEIGHTS_NAME).stat().st_size
    for v in (1, 2, 3):
        assert (compacted.root / snapshot_dirname(v) / compact_name(WEIGHTS_NAME)).stat().st_size < 0.6 * full


def test_the_codec_is_exact_for_arbitrary_bytes():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, 10_001, dtype=np.uint8)  # not a safetensors file, odd length
    target = base.copy()
    target[rng.integers(0, len(target), 50)] ^= 0xA5
    blob = encode_delta(target, base, base_dirname="v00000002", base_sha256="0" * 64, sha256="1" * 64)
    path = Path("/nonexistent/v00000001/x.zdelta")
    from logit_service.snapshots.compact import _parse_header, apply_delta

    header_len = int.from_bytes(blob[8:16], "little")
    header = _parse_header(blob[16 : 16 + header_len], len(blob), path)
    out = np.empty_like(base)
    apply_delta(header, blob, base, out, path)
    assert np.array_equal(out, target)


def _delta_path(store: SnapshotStore, v: int) -> Path:
    return store.root / snapshot_dirname(v) / compact_name(WEIGHTS_NAME)


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    ["flip a byte in a frame", "truncate", "flip the magic", "garbage header", "flip a byte of the base"],
)
def test_a_damaged_compact_version_fails_as_corrupt_and_the_others_still_load(compacted, trained, damage):
    _, states = trained
    path = _delta_path(compacted, 2)
    if damage == "flip a byte in a frame":
        _flip(path, path.stat().st_size - 10)
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "flip the magic":
        _flip(path, 0)
    elif damage == "garbage header":
        data = path.read_bytes()
        n = int.from_bytes(data[8:16], "little")
        path.write_bytes(data[:16] + b"{" * n + data[16 + n :])
    else:  # version 4 is the base of 3, which is the base of 2
        _flip(compacted.root / snapshot_dirname(4) / WEIGHTS_NAME, 5000)
    with pytest.raises(SnapshotCorrupt) as e:
        compacted.load(compacted.resolve(2))
    assert snapshot_dirname(2) in e.value.message
    # Versions whose chain does not pass through the damage still load exactly (1 is a delta from 2).
    for v in (0, 5) if damage == "flip a byte of the base" else (0, 3, 4, 5):
        assert _equal(compacted.load(compacted.resolve(v)).state_dict, states[v]), v


def test_a_delta_naming_an_older_or_its_own_version_as_base_is_refused(compacted):
    path = _delta_path(compacted, 2)
    base = read_weights_file(compacted.root / snapshot_dirname(1) / WEIGHTS_NAME, read_manifest(compacted.root / snapshot_dirname(1)).files[WEIGHTS_NAME])
    target = read_weights_file(compacted.root / snapshot_dirname(2) / WEIGHTS_NAME, read_manifest(compacted.root / snapshot_dirname(2)).files[WEIGHTS_NAME])
    sha = read_manifest(compacted.root / snapshot_dirname(2)).files[WEIGHTS_NAME]
    path.write_bytes(encode_delta(target.numpy(), base.numpy(), base_dirname=snapshot_dirname(1),
                                  base_sha256=read_manifest(compacted.root / snapshot_dirname(1)).files[WEIGHTS_NAME], sha256=sha))  # fmt: skip
    with pytest.raises(SnapshotCorrupt, match="must be a newer version"):
        compacted.load(compacted.resolve(2))


@pytest.mark.parametrize("base_digest", ["its own", "another"])
def test_a_delta_naming_its_own_version_as_base_is_refused(compacted, base_digest):
    # A file its own base would make the restore read itself: refused as the older base above is. The
    # base check comes before the chain is followed, so with another base digest too the error names the
    # bad base, not a later symptom.
    path = _delta_path(compacted, 2)
    sha = read_manifest(compacted.root / snapshot_dirname(2)).files[WEIGHTS_NAME]
    target = read_weights_file(compacted.root / snapshot_dirname(2) / WEIGHTS_NAME, sha)
    base_sha256 = sha if base_digest == "its own" else "0" * 64
    path.write_bytes(encode_delta(target.numpy(), target.numpy(), base_dirname=snapshot_dirname(2), base_sha256=base_sha256, sha256=sha))
    with pytest.raises(SnapshotCorrupt, match=f"names base {snapshot_dirname(2)}; a delta's base must be a newer version"):
        compacted.load(compacted.resolve(2))


def test_a_delta_whose_base_is_gone_fails_as_corrupt(compacted):
    (compacted.root / snapshot_dirname(4) / WEIGHTS_NAME).unlink()
    with pytest.raises(SnapshotCorrupt, match="in any form"):
        compacted.load(compacted.resolve(3))


def test_materialise_gives_a_directory_transformers_loads(compacted, trained):
    from transformers import AutoModelForCausalLM

    _, states = trained
    path = compacted.materialise(2)
    assert (path / WEIGHTS_NAME).exists() and not (path / compact_name(WEIGHTS_NAME)).exists()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], states[2][k]) for k in loaded)
    assert _equal(compacted.load(compacted.resolve(2)).state_dict, states[2])
    assert _equal(compacted.load(compacted.resolve(1)).state_dict, states[1])  # 1 still a delta from 2


def test_a_delta_another_replica_removes_while_this_one_makes_the_version_full_is_no_error(compacted, trained, monkeypatch):
    """Replicas sharing a snapshot directory may make one version full at the same moment: the other's
    removal of the delta lands between this one's rename of the full file and its own removal (put in
    through the directory fsync between the two)."""
    _, states = trained
    zpath = _delta_path(compacted, 2)
    fsync = compaction.fsync_dir

    def the_other_replica_removes_the_delta(path):
        zpath.unlink(missing_ok=True)
        fsync(path)

    monkeypatch.setattr(compaction, "fsync_dir", the_other_replica_removes_the_delta)
    path = compacted.materialise(2)
    assert (path / WEIGHTS_NAME).exists() and not zpath.exists()
    assert _equal(compacted.load(compacted.resolve(2)).state_dict, states[2])


def test_a_leased_version_is_made_full_before_its_base_is_evicted(tmp_path, trained):
    config, states = trained
    store = SnapshotStore(tmp_path / "s", InMemoryRegistry(), retention_window=3, cache_bytes=0, compact_keyframe_interval=100)
    _publish(store, trained, range(3))
    store.compactor.run_once()
    assert _delta_path(store, 1).exists()  # 1 is a delta from 2
    store.lease([1], holder="rollout", ttl_s=600)
    _publish(store, trained, range(3, 5))  # window [2, 4], then [2, 4]: 2 is evicted at version 5
    store.compactor.run_once()
    store.publish(5, write_snapshot(store.root, 5, states[5], config))  # evicts 2, the base of 1
    assert not (store.root / snapshot_dirname(2)).exists()
    assert (store.root / snapshot_dirname(1) / WEIGHTS_NAME).exists() and not _delta_path(store, 1).exists()
    assert _equal(store.load(store.resolve(1)).state_dict, states[1])


def test_a_leased_version_that_cannot_be_made_full_is_logged_with_the_base_it_loses(tmp_path, trained, caplog):
    # Operators must learn which version lost which base: the error names both, and the eviction goes on.
    config, states = trained
    store = SnapshotStore(tmp_path / "s", InMemoryRegistry(), retention_window=3, cache_bytes=0, compact_keyframe_interval=100)
    _publish(store, trained, range(3))
    store.compactor.run_once()
    store.lease([1], holder="rollout", ttl_s=600)
    _publish(store, trained, range(3, 5))
    store.compactor.run_once()
    _flip(_delta_path(store, 1), _delta_path(store, 1).stat().st_size - 10)  # 1 can no longer be restored
    with caplog.at_level("ERROR", logger="logit_service.snapshots.store"):
        store.publish(5, write_snapshot(store.root, 5, states[5], config))  # evicts 2, the base of 1
    lost = [r.getMessage() for r in caplog.records if "loses its delta base" in r.getMessage()]
    assert lost and lost[0].startswith(f"version 1 loses its delta base ['{snapshot_dirname(2)}']: ")
    assert not (store.root / snapshot_dirname(2)).exists()


def test_republishing_a_compact_version_verifies_it_by_restoring(compacted, trained):
    record, new = compacted.publish(2, compacted.root / snapshot_dirname(2))
    assert not new and record.digest == read_manifest(compacted.root / snapshot_dirname(2)).digest
    _flip(_delta_path(compacted, 2), _delta_path(compacted, 2).stat().st_size - 10)
    with pytest.raises(SnapshotCorrupt):
        compacted.publish(2, compacted.root / snapshot_dirname(2))


def test_a_restarted_store_scans_and_serves_compact_versions(compacted, trained):
    fresh = SnapshotStore(compacted.root, InMemoryRegistry(), retention_window=NUM_VERSIONS, cache_bytes=0)
    fresh.recover()  # no compaction configured: compact versions still load
    assert [r.policy_version for r in fresh.retained()] == list(range(NUM_VERSIONS))
    for v in range(NUM_VERSIONS):
        assert _equal(fresh.load(fresh.resolve(v)).state_dict, trained[1][v]), v


def test_the_background_compactor_reports_idle_once_its_pass_is_done(tmp_path, trained):
    store = _store(tmp_path / "s")
    store.compactor.start()
    try:
        _publish(store, trained)  # every publish requests a pass
        assert store.compactor.wait_idle(120)
        assert _delta_path(store, 3).exists() and store.compactor.failures == 0
    finally:
        store.compactor.stop()


def test_the_compactor_counts_exactly_the_bytes_its_deltas_save(tmp_path, trained):
    store = _store(tmp_path / "s")
    _publish(store, trained)
    full = {v: (store.root / snapshot_dirname(v) / WEIGHTS_NAME).stat().st_size for v in range(NUM_VERSIONS)}
    done = store.compactor.run_once()
    saved = sum(full[v] - _delta_path(store, v).stat().st_size for v in done)
    assert done and store.compactor.compacted == len(done) and store.compactor.bytes_saved == saved
    assert store.compactor.run_once() == [] and store.compactor.bytes_saved == saved  # nothing left to compact


def test_a_delta_that_does_not_restore_is_never_switched_in(tmp_path, trained, monkeypatch, caplog):
    # An encoder bug must cost the space saving only: the full file stays and the warning names the file.
    def broken(target, base, **kwargs):  # a well-formed delta of other bytes than the target's
        wrong = target.copy()
        wrong[-1] ^= 0x01
        return encode_delta(wrong, base, **kwargs)

    monkeypatch.setattr(compaction, "encode_delta", broken)
    store = _store(tmp_path / "s")
    _publish(store, trained)
    with caplog.at_level("WARNING", logger="logit_service.snapshots.compaction"):
        assert store.compactor.run_once() == []
    assert store.compactor.failures > 0
    warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("not compacting version 1: ")]
    assert warned and f"{snapshot_dirname(1)}/{compact_name(WEIGHTS_NAME)}: the delta written does not restore its version" in warned[0]
    assert (store.root / snapshot_dirname(1) / WEIGHTS_NAME).exists() and not _delta_path(store, 1).exists()
    assert _equal(store.load(store.resolve(1)).state_dict, trained[1][1])


def test_the_background_compactor_runs_on_a_thread_named_for_it(tmp_path):
    # Operators find it by name in a thread dump.
    store = _store(tmp_path / "s")
    store.compactor.start()
    try:
        assert "logit-compactor" in [t.name for t in threading.enumerate()]
    finally:
        store.compactor.stop()
    assert "logit-compactor" not in [t.name for t in threading.enumerate()]


def test_a_file_of_any_length_is_made_full_again_bit_for_bit(tmp_path, trained):
    # Weights files need not be a multiple of any element width: 3 bf16 values leave the file's length odd in words.
    config, states = trained
    odd = [dict(s, **{"extra.odd": s["model.norm.weight"][:3].to(torch.bfloat16)}) for s in states]
    store = _store(tmp_path / "s")
    for v in range(NUM_VERSIONS):
        store.publish(v, write_snapshot(store.root, v, odd[v], config))
    assert (store.root / snapshot_dirname(1) / WEIGHTS_NAME).stat().st_size % 8
    assert 1 in store.compactor.run_once()
    store.materialise(1)
    assert (store.root / snapshot_dirname(1) / WEIGHTS_NAME).exists() and not _delta_path(store, 1).exists()
    assert _equal(store.load(store.resolve(1)).state_dict, odd[1])


def test_a_full_disk_during_compaction_leaves_the_version_full_and_says_which(tmp_path, trained, monkeypatch, caplog):
    def no_space(root, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(compaction, "_write_aside", no_space)
    store = _store(tmp_path / "s")
    _publish(store, trained)
    with caplog.at_level("WARNING", logger="logit_service.snapshots.compaction"):
        assert store.compactor.run_once() == []
    assert store.compactor.failures == 3  # versions 1, 2 and 3, each tried and left alone
    warned = sorted(r.getMessage() for r in caplog.records if r.getMessage().startswith("not compacting version "))
    assert [w.split(":")[0] for w in warned] == [f"not compacting version {v}" for v in (1, 2, 3)]
    assert all("No space left on device" in w for w in warned)
    for v in (1, 2, 3):
        assert (store.root / snapshot_dirname(v) / WEIGHTS_NAME).exists() and not _delta_path(store, v).exists()


def test_a_compact_version_is_sent_to_a_peer_as_its_full_files(compacted, tmp_path, trained):
    """FetchVersion's file list: a version stored as a delta goes out restored (the peer may hold no
    base), byte for byte the file the version was published with, and its size is that file's."""
    from logit_service.snapshots.outgoing import stored_snapshot

    config, states = trained
    reference = write_snapshot(tmp_path / "reference", 2, states[2], config)
    raw, files = stored_snapshot(compacted, 2)
    assert raw == (compacted.root / snapshot_dirname(2) / "manifest.json").read_bytes()
    (weights,) = [f for f in files if f.name == WEIGHTS_NAME]
    expected = (reference / WEIGHTS_NAME).read_bytes()
    assert weights.size == len(expected) and bytes(weights.data) == expected
    assert weights.sha256 == read_manifest(reference).files[WEIGHTS_NAME]


def test_a_stored_manifest_is_sent_up_to_the_manifest_limit_and_refused_past_it(compacted, monkeypatch):
    from logit_service.snapshots import outgoing

    size = (compacted.root / snapshot_dirname(2) / "manifest.json").stat().st_size
    monkeypatch.setattr(outgoing, "MAX_MANIFEST_BYTES", size)
    assert len(outgoing.stored_snapshot(compacted, 2)[0]) == size  # exactly at the limit: sent
    monkeypatch.setattr(outgoing, "MAX_MANIFEST_BYTES", size - 1)
    with pytest.raises(SnapshotCorrupt) as e:
        outgoing.stored_snapshot(compacted, 2)
    assert e.value.message == f"v00000002/manifest.json holds {size} bytes, over the manifest limit"

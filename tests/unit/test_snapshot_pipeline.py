"""Chunked loads on several threads: in-order digests, and damage refused in any chunk, of full and compact files."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from logit_common.snapshots.pipeline import run_in_order
from logit_service.errors import SnapshotCorrupt
from logit_service.snapshots import compact, loader
from logit_service.snapshots.compact import apply_delta, encode_delta, open_delta
from logit_service.snapshots.loader import read_verified_buffer
from logit_service.snapshots.manifest import file_sha256

SMALL_CHUNK = 4096  # many chunks in a file of a few hundred kB, so several are in flight at once


def test_results_are_handed_back_in_order_even_when_later_items_finish_first():
    first_may_finish = threading.Event()
    finished, handed_back = [], []

    def work(item: int) -> None:
        if item == 0:
            first_may_finish.wait(timeout=30)  # held until another item has finished
        finished.append(item)
        if item == 1:
            first_may_finish.set()

    run_in_order([0, 1, 2, 3], work, handed_back.append, workers=2)
    assert finished.index(1) < finished.index(0)
    assert handed_back == [0, 1, 2, 3]


def test_the_first_error_is_raised_and_nothing_after_it_is_handed_back():
    handed_back = []

    def work(item: int) -> None:
        if item == 2:
            raise SnapshotCorrupt("chunk 2 is damaged")

    with pytest.raises(SnapshotCorrupt, match="chunk 2"):
        run_in_order(list(range(6)), work, handed_back.append, workers=2)
    assert handed_back == [0, 1]


def _weights(path: Path, seed: int, scale: float = 1.0) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    tensors = {"a": torch.randn(300, 101, generator=generator) * scale, "b": torch.randn(77, generator=generator).to(torch.bfloat16)}
    save_file(tensors, str(path), metadata={"format": "pt"})
    return np.fromfile(path, dtype=np.uint8)


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(loader, "_CHUNK_BYTES", SMALL_CHUNK)
    monkeypatch.setattr(compact, "CHUNK_BYTES", SMALL_CHUNK)


def test_a_file_read_in_many_chunks_gives_its_bytes_and_a_changed_byte_in_any_chunk_is_refused(tmp_path, small_chunks):
    path = tmp_path / "model.safetensors"
    data = _weights(path, seed=0)
    assert len(data) > 20 * SMALL_CHUNK
    expected = file_sha256(path)
    assert np.array_equal(read_verified_buffer(path, expected).numpy(), data)
    for at in (len(data) // 2, len(data) - 1):  # a middle chunk, the last (short) chunk
        damaged = data.copy()
        damaged[at] ^= 0x01
        damaged.tofile(path)
        with pytest.raises(SnapshotCorrupt, match="sha256"):
            read_verified_buffer(path, expected)


def _delta_file(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A .zdelta of many frames between two close versions, written where a load finds it."""
    newer = _weights(tmp_path / "newer.safetensors", seed=1)
    older = newer.copy()
    older[-300 * 101 * 4 :: 13] ^= 0x03  # low mantissa bits of some weights, as a training step changes them
    zpath = tmp_path / "v00000001" / compact.compact_name("model.safetensors")
    zpath.parent.mkdir()
    zpath.write_bytes(encode_delta(older, newer, base_dirname="v00000002", base_sha256="0" * 64, sha256="1" * 64))
    return zpath, older, newer


def test_a_delta_of_many_frames_read_by_the_decoding_threads_restores_exactly(tmp_path, small_chunks):
    zpath, older, newer = _delta_file(tmp_path)
    header, zfile = open_delta(zpath)
    with zfile:
        assert len(header.chunks) > 20
        out = np.empty_like(newer)
        apply_delta(header, zfile.fileno(), newer, out, zpath)
    assert np.array_equal(out, older)


def test_a_delta_damaged_in_a_middle_frame_does_not_restore_its_version(tmp_path, small_chunks):
    import hashlib

    zpath, older, newer = _delta_file(tmp_path)
    header, zfile = open_delta(zpath)
    zfile.close()
    middle = header.chunks[len(header.chunks) // 2]
    blob = bytearray(zpath.read_bytes())
    blob[middle.offset + middle.length // 2] ^= 0x40
    zpath.write_bytes(bytes(blob))
    header, zfile = open_delta(zpath)
    digest = hashlib.sha256()
    out = np.empty_like(newer)
    with zfile:
        try:
            apply_delta(header, zfile.fileno(), newer, out, zpath, digest=digest)
        except SnapshotCorrupt:
            return  # the decoder refused the buffer
    # Or the frame still decoded: then the restored bytes miss the digest the manifest lists.
    assert digest.hexdigest() != hashlib.sha256(older.tobytes()).hexdigest()


def test_a_delta_cut_short_after_its_header_was_checked_is_refused(tmp_path, small_chunks):
    zpath, _, newer = _delta_file(tmp_path)
    header, zfile = open_delta(zpath)
    with zfile:
        with open(zpath, "r+b") as f:
            f.truncate(header.chunks[-3].offset)  # the last frames are gone by the time they are read
        with pytest.raises(SnapshotCorrupt, match="changed size"):
            apply_delta(header, zfile.fileno(), newer, np.empty_like(newer), zpath)


def test_a_chain_of_many_frame_deltas_loads_exactly_through_the_store_and_damage_mid_chain_is_refused(tmp_path, small_chunks):
    from logit_service.demo.tiny_model import build_tiny_model, sgd_step
    from logit_service.registry.memory import InMemoryRegistry
    from logit_service.snapshots.manifest import snapshot_dirname
    from logit_service.snapshots.store import SnapshotStore
    from logit_service.snapshots.writer import WEIGHTS_NAME, write_snapshot

    model = build_tiny_model(seed=0, vocab_size=256, hidden_size=32, layers=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    generator = torch.Generator().manual_seed(0)
    store = SnapshotStore(tmp_path / "snapshots", InMemoryRegistry(), retention_window=5, cache_bytes=0,
                          compact_keyframe_interval=4)  # fmt: skip
    states = []
    for v in range(5):  # 0 and 4 stay full; 3 is a delta from 4, 2 from 3, 1 from 2
        states.append({k: t.detach().clone() for k, t in model.state_dict().items()})
        store.publish(v, write_snapshot(store.root, v, states[v], model.config.to_dict()))
        sgd_step(model, optimizer, torch.randint(0, 256, (2, 16), generator=generator))
    assert store.compactor.run_once() == [1, 2, 3]
    zpath = store.root / snapshot_dirname(2) / compact.compact_name(WEIGHTS_NAME)
    header, zfile = open_delta(zpath)
    zfile.close()
    assert len(header.chunks) > 10
    for v in range(5):
        loaded = store.load(store.resolve(v)).state_dict
        assert all(torch.equal(loaded[k].view(torch.uint8), t.view(torch.uint8)) for k, t in states[v].items()), v
    middle = header.chunks[len(header.chunks) // 2]
    blob = bytearray(zpath.read_bytes())
    blob[middle.offset + middle.length // 2] ^= 0x40
    zpath.write_bytes(bytes(blob))
    for v in (1, 2):  # both restore through version 2's delta
        with pytest.raises(SnapshotCorrupt) as e:
            store.load(store.resolve(v))
        # Named as the version that does not restore, or as the damaged delta where the decoder refuses its buffer.
        assert snapshot_dirname(v) in e.value.message or snapshot_dirname(2) in e.value.message
    loaded = store.load(store.resolve(3)).state_dict  # its chain does not pass through the damage
    assert all(torch.equal(loaded[k].view(torch.uint8), t.view(torch.uint8)) for k, t in states[3].items())


# --- the pool's size and names, and reads that come back short -------------------------------------


def test_the_pool_runs_at_most_the_workers_asked_for_on_threads_named_for_the_work():
    # Three items meet at a barrier, so three threads must run at once; the others queue behind them
    # instead of starting threads of their own.
    meet = threading.Barrier(3, timeout=30)
    names: list[str] = []

    def work(i: int) -> None:
        names.append(threading.current_thread().name)
        if i < 3:
            meet.wait()

    run_in_order(list(range(8)), work, workers=3)

    assert len(names) == 8 and len(set(names)) == 3
    assert all(n.startswith("chunk_") for n in names)  # what a stack dump of a slow load shows


def test_no_more_items_run_at_once_than_the_workers_asked_for():
    # Four items that wait for each other can never all be running with three workers: the barrier
    # breaks (after its timeout), where a pool of more threads would let them meet.
    meet = threading.Barrier(4, timeout=2)

    def work(i: int) -> None:
        if i < 4:
            meet.wait()

    with pytest.raises(threading.BrokenBarrierError):
        run_in_order(list(range(8)), work, workers=3)


@pytest.mark.parametrize(("cores", "workers"), [(1, 2), (8, 8), (None, 2)])
def test_the_default_pool_has_a_worker_per_core_and_at_least_two(monkeypatch, cores, workers):
    from logit_common.snapshots import pipeline

    monkeypatch.setattr(pipeline.os, "cpu_count", lambda: cores)
    assert pipeline.default_workers() == workers


def test_a_read_past_the_end_of_the_file_returns_what_the_file_holds(tmp_path):
    from logit_common.snapshots.pipeline import pread_exactly

    path = tmp_path / "one-byte"
    path.write_bytes(b"\x07")
    dst = bytearray(10)
    with open(path, "rb") as f:
        assert pread_exactly(f.fileno(), memoryview(dst), 0) == 1
    assert dst[:1] == b"\x07"


def test_a_read_the_kernel_splits_is_continued_where_it_stopped(tmp_path):
    # Linux returns at most 2 GiB − 4 KiB per read, so a larger shard (a 7B model's) arrives in two
    # reads: the second must start where the first ended. A sparse file keeps this cheap on disk.
    from logit_common.snapshots.pipeline import pread_exactly

    first_read = 0x7FFFF000
    size = first_read + 8192
    path = tmp_path / "sparse"
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(first_read + 100)
        f.write(b"tail")
    dst = np.empty(size, dtype=np.uint8)
    with open(path, "rb") as f:
        assert pread_exactly(f.fileno(), memoryview(dst), 0) == size
    assert dst[first_read + 100 : first_read + 104].tobytes() == b"tail"
    assert not dst[first_read : first_read + 100].any() and not dst[:4096].any()

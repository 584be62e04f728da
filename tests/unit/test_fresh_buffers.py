"""fresh_byte_buffer: weight files land on huge pages where the kernel offers them, and the mapping
lives as long as any view of it."""

from __future__ import annotations

import gc
import mmap
import resource
from pathlib import Path

import numpy as np
import pytest
import torch

from logit_service.snapshots.buffers import HUGE_PAGES_FROM_BYTES, fresh_byte_buffer

_THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _huge_pages_on_request() -> bool:
    return _THP.exists() and ("[madvise]" in _THP.read_text() or "[always]" in _THP.read_text())


@pytest.mark.skipif(not _huge_pages_on_request(), reason="the kernel gives no transparent huge pages on request")
def test_first_touch_of_a_large_buffer_faults_far_fewer_pages_than_small_pages_would():
    size = 64 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffer = fresh_byte_buffer(size)
    buffer.numpy()[::4096] = 1  # touch every small page
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < (size // 4096) // 4, f"{faults} faults for {size // 4096} small pages"
    assert int(buffer.sum()) == size // 4096


def test_views_keep_the_mapping_alive_after_the_buffer_is_gone():
    buffer = fresh_byte_buffer(HUGE_PAGES_FROM_BYTES * 2)
    buffer.numpy()[:] = np.arange(buffer.numel(), dtype=np.uint64).astype(np.uint8)
    # A safetensors-style view: float32 tensors over part of the bytes, as the loader makes them.
    view = buffer[1024 : 1024 + 4096].view(torch.float32)
    expected = view.clone()
    del buffer
    gc.collect()
    assert view.numpy().tobytes() == expected.numpy().tobytes()  # bytes: some of these floats are NaN
    assert view.view(torch.uint8)[:8].tolist() == [(1024 + i) % 256 for i in range(8)]


@pytest.mark.parametrize("size", [0, 1, HUGE_PAGES_FROM_BYTES - 1, HUGE_PAGES_FROM_BYTES, HUGE_PAGES_FROM_BYTES + 4097])
def test_every_size_gives_a_writable_uint8_buffer_of_exactly_that_size(size):
    buffer = fresh_byte_buffer(size)
    assert buffer.dtype == torch.uint8 and buffer.numel() == size and buffer.is_contiguous()
    if size:
        buffer.numpy()[-1] = 7
        assert int(buffer[-1]) == 7


@pytest.mark.skipif(not hasattr(mmap, "MADV_HUGEPAGE"), reason="no madvise(MADV_HUGEPAGE) on this platform")
def test_a_buffer_of_exactly_the_threshold_is_a_mapping_and_one_byte_less_is_not():
    # A mapping's storage is not resizable, torch's own allocation is: that tells which one was taken.
    assert not fresh_byte_buffer(HUGE_PAGES_FROM_BYTES).untyped_storage().resizable()
    assert fresh_byte_buffer(HUGE_PAGES_FROM_BYTES - 1).untyped_storage().resizable()

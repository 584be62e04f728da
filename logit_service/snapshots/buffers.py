"""Byte buffers for whole weight files, backed by transparent huge pages where the kernel offers them.

A loaded file lands in a fresh buffer of its size, and the first touch of fresh memory costs one page
fault per page. With 4 KiB pages that is 52,700 faults and about 137 ms for a 206 MB file on a 2-core
machine: more than reading the file from the page cache into memory already touched (45 ms), and as
much as hashing it. Huge pages fault 2 MiB at a time (about 100 faults, 30 ms). Linux gives them to an
anonymous mapping that asks for them (madvise) under its common `madvise` and `always` settings; where
it does not, or elsewhere, the same mapping (or a plain torch allocation) simply has small pages.
"""

from __future__ import annotations

import mmap
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Below this a file's pages are few and a huge page would be mostly empty.
HUGE_PAGES_FROM_BYTES = 8 << 20


def fresh_byte_buffer(size: int) -> "torch.Tensor":
    """An uninitialised uint8 tensor of `size` bytes, on huge pages where possible. It owns its mapping:
    the memory goes back to the kernel when the tensor and every view of it are gone."""
    import torch

    if size < HUGE_PAGES_FROM_BYTES or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty(size, dtype=torch.uint8)
    region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        region.madvise(mmap.MADV_HUGEPAGE)
    except OSError:  # huge pages switched off ("never"): small pages, as torch.empty would give
        pass
    return torch.frombuffer(region, dtype=torch.uint8)  # holds a reference to the mapping

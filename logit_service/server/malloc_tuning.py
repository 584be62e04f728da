"""Keep freed memory in the allocator between forwards (glibc only).

A forward allocates and frees the same intermediate tensors (activations, a chunk of vocabulary
logits) every call. glibc's malloc serves large blocks by mmap and, when they are freed, returns them
to the kernel; it raises that threshold by itself as it sees blocks freed, but only per the history of
the process, and the compute thread gets an arena of its own whose heaps are trimmed eagerly. So a
server process can end up mapping, zero-filling and unmapping some hundred MB on every forward: 25,000
page faults and 130 ms of kernel time per 8 × 512 Score of the benchmark model, taken while both
OpenMP threads wait on the same address-space lock. A trainer process that scored the same batch
in-process had warmed its allocator into reusing that memory and took no faults at all.

Fixed thresholds make every process behave like the warm one: blocks up to 32 MiB (the largest mmap
threshold glibc documents) come from the heap and stay there when freed, up to `_TRIM_BYTES` of free
memory at the top of a heap. What a forward needs it still allocates; what it frees stays with the
process (and in its RSS, up to the largest forward's peak) for the next forward. Larger blocks
(the logits chunk of a large vocabulary) are still mapped per use: their page faults are a small share
of the matmuls that fill them. One case the thresholds do not reach: a worker thread's arena grows in
heaps of at most 64 MiB, and glibc unmaps a heap that is left wholly free whatever the trim threshold,
so the part of a forward's intermediates that spills into a heap of its own is faulted back each call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# mallopt parameter numbers, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_BYTES = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: the largest it documents (2.36 answers 1 to any value)
_TRIM_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Sets the thresholds for this process; False (and nothing changed) where malloc is not glibc's."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # no libc found, or not glibc (musl has no mallopt)
        log.info("malloc thresholds left as they are: no glibc mallopt in this process")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_BYTES) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_BYTES) == 1
    if not ok:
        log.warning("glibc refused the malloc thresholds; freed memory may be returned to the kernel every forward")
    return ok

"""Tensor work off the compute thread runs without an OpenMP team of its own.

GNU OpenMP, the runtime of PyTorch's CPU wheels, gives each thread that runs a parallel region a team
of worker threads, kept for as long as that thread lives. Once a process holds more of those threads
than it has cores, every team stops spinning between parallel regions and sleeps instead (a spin
count of 100 in place of 300,000), so each of a forward's hundreds of regions begins with a futex
wake-up. On 2 cores a second team made a forward 10-25% slower: 300-450 sleeps per thread per
8 x 512 Score, where a lone team takes fewer than 10.

A server's forwards run on its one compute thread. Its other long-lived threads (I/O, request
decoding, prefetch, compaction, EWMA folding, uploads, shard reads) copy, cast, hash and fold tensors:
elementwise work whose bits do not depend on how many threads compute them, and which needs no team.
`serial_tensor_ops()` makes the calling thread run its tensor ops by itself.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)

# GNU (libgomp), Intel (libiomp5) and LLVM (libomp) OpenMP, as a wheel or the system ships them; and
# MKL, which keeps a thread count of its own (torch's CPU wheels link it into libtorch_cpu).
_OPENMP_LIBRARY = re.compile(r"^lib(gomp|iomp5|omp)([-.].*)?\.so(\..*)?$")
_MKL_LIBRARY = re.compile(r"^lib(torch_cpu|mkl_rt|mkl_core)([-.].*)?\.so(\..*)?$")


@functools.cache
def _thread_count_setters() -> tuple:
    """This thread's count setters of the OpenMP runtimes and MKLs loaded in the process: normally
    one of each, `omp_set_num_threads` and MKL's `MKL_Set_Num_Threads_Local` (by value: the lower-case
    names are its Fortran entry points, which take a pointer)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # not Linux: no way to find the libraries torch loaded, so nothing is changed
        return ()
    paths = sorted({fields[5] for line in maps.splitlines() if len(fields := line.split(maxsplit=5)) == 6})
    setters = []
    for path in paths:
        name = Path(path).name
        symbol = "omp_set_num_threads" if _OPENMP_LIBRARY.match(name) else "MKL_Set_Num_Threads_Local" if _MKL_LIBRARY.match(name) else None
        if symbol is None:
            continue
        try:
            setter = getattr(ctypes.CDLL(path), symbol)  # the loaded library: dlopen returns its handle
        except (OSError, AttributeError):
            continue
        setter.argtypes = [ctypes.c_int]
        setters.append(setter)
    return tuple(setters)


def serial_tensor_ops() -> bool:
    """Makes tensor ops on the calling thread run on it alone (a ThreadPoolExecutor initializer, or a
    thread's first call). True when torch then counts one thread here; the other threads' counts,
    the compute thread's included, are untouched."""
    try:
        import torch
    except ImportError:  # no torch, no tensor ops
        return False
    # torch sets a thread's OpenMP count at that thread's first use, from the process-wide setting;
    # done first, so that it does not later undo the count set below.
    torch.get_num_threads()
    for set_num_threads in _thread_count_setters():
        set_num_threads(1)
    serial = torch.get_num_threads() == 1
    if not serial:
        log.debug("tensor ops on this thread keep %d threads: no OpenMP runtime found", torch.get_num_threads())
    return serial

"""Chunks of a file worked on by a thread pool and handed back in file order, for a digest to follow them.

Reading (pread), Blosc decoding and numpy's loops release the GIL, so several chunks proceed on several
cores while the calling thread feeds each finished chunk to sha256, which is sequential by nature.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

Item = TypeVar("Item")


def default_workers() -> int:
    """One worker per core, at least two: the calling thread hashes beside them."""
    return max(2, os.cpu_count() or 1)


def run_in_order(
    items: Sequence[Item],
    work: Callable[[Item], None],
    then: Callable[[Item], None] | None = None,
    *,
    workers: int | None = None,
    name: str = "chunk",
) -> None:
    """work(item) for every item on the pool; then(item) on this thread, in order, as each one is done.

    The first error stops the rest: items not yet started are cancelled, and the pool is left only
    once the running ones have finished (they write into buffers the caller owns)."""
    with ThreadPoolExecutor(max_workers=workers or default_workers(), thread_name_prefix=name) as pool:
        futures = [pool.submit(work, item) for item in items]
        try:
            for item, future in zip(items, futures):
                future.result()
                if then is not None:
                    then(item)
        finally:
            for future in futures:
                future.cancel()


def pread_exactly(fd: int, dst: memoryview, offset: int) -> int:
    """Fills `dst` from the file at `offset`; returns the bytes read, fewer only where the file ended."""
    got = 0
    while got < len(dst):
        n = os.preadv(fd, [dst[got:]], offset + got)
        if n <= 0:
            break
        got += n
    return got


def advise_sequential(fd: int) -> None:
    """Tells the kernel the file is read whole, front to back (Linux then reads further ahead); a hint only."""
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    except (AttributeError, OSError):  # not every platform or file system takes advice
        pass

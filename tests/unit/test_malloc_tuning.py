"""keep_freed_memory: memory a thread frees is reused by its next allocations, not faulted back in.

Each case runs in a fresh interpreter: malloc thresholds are process-wide and path-dependent, and the
test process has its own allocation history.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# A worker thread (the server's compute thread is one) allocates ten 6 MiB blocks and frees them, six
# times over, as a forward does with its intermediates; printed: the thread's page faults per round.
_ROUNDS = """
import resource, sys, threading
import numpy as np
if sys.argv[1] == "on":
    from logit_service.server.malloc_tuning import keep_freed_memory
    assert keep_freed_memory()
def rounds(out):
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        blocks = [np.ones((6 << 20) // 8) for _ in range(10)]
        del blocks
        out.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
out = []
worker = threading.Thread(target=rounds, args=(out,))
worker.start()
worker.join()
print(" ".join(map(str, out)))
"""

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's"
)


def _faults_per_round(mode: str) -> list[int]:
    done = subprocess.run(
        [sys.executable, "-c", _ROUNDS, mode], cwd=REPO, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [int(n) for n in done.stdout.split()]


@glibc_only
def test_freed_blocks_are_reused_without_page_faults():
    faults = _faults_per_round("on")
    # The first round maps and touches the 60 MiB (fewer faults than its 15,360 pages where the kernel
    # backs them with huge pages); every later round reuses them.
    assert faults[0] > 1_000
    assert max(faults[1:]) < 200, faults


@glibc_only
def test_the_default_allocator_returns_them_and_faults_them_back():
    """What the setting is for: without it the same rounds fault the freed memory back in every time
    (if glibc ever stops trimming a thread's heap this way, the setting is no longer needed)."""
    faults = _faults_per_round("off")
    assert min(faults[1:]) > 1_000, faults


_IN_THIS_PROCESS_ROUNDS = 6


@glibc_only
def test_in_this_process_a_worker_thread_reuses_what_it_freed():
    """The same rounds in the test's own process, after the setting: whatever this process allocated
    before, a thread's freed blocks stay with it (the thresholds are fixed, not learned from history).

    Six blocks, not ten: a thread's arena grows in heaps of at most 64 MiB, and glibc unmaps a heap
    left wholly free whatever the trim threshold. The arena a new thread takes in a long-lived process
    may still hold another thread's blocks, and 60 MiB then spills into a second heap that comes and
    goes every round (1,029 faults a round, seen once in the whole suite); 36 MiB stays in the first."""
    import resource
    import threading

    import numpy as np

    from logit_service.server.malloc_tuning import keep_freed_memory

    assert keep_freed_memory()
    faults: list[int] = []

    def rounds() -> None:
        for _ in range(_IN_THIS_PROCESS_ROUNDS):
            before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            blocks = [np.ones((6 << 20) // 8) for _ in range(6)]
            del blocks
            faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)

    worker = threading.Thread(target=rounds)
    worker.start()
    worker.join()
    assert len(faults) == _IN_THIS_PROCESS_ROUNDS
    assert max(faults[1:]) < 200, faults


@glibc_only
def test_thresholds_glibc_accepts_are_set_without_a_warning(caplog):
    from logit_service.server.malloc_tuning import keep_freed_memory

    with caplog.at_level("INFO", logger="logit_service.server.malloc_tuning"):
        assert keep_freed_memory()
    assert caplog.records == []


def test_without_a_glibc_mallopt_nothing_is_changed_and_it_says_so(caplog, monkeypatch):
    from logit_service.server import malloc_tuning

    def no_libc(_name):
        raise OSError("no C library here")

    monkeypatch.setattr(malloc_tuning.ctypes, "CDLL", no_libc)
    with caplog.at_level("INFO", logger="logit_service.server.malloc_tuning"):
        assert malloc_tuning.keep_freed_memory() is False
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "malloc thresholds left as they are: no glibc mallopt in this process")
    ]


def test_a_threshold_the_c_library_refuses_is_reported_and_returns_false(caplog, monkeypatch):
    """glibc 2.36 answers 1 to any mallopt; others refuse an mmap threshold above their maximum. A C
    library that refuses (standing in for those) leaves the setting off, and the server says so."""
    from logit_service.server import malloc_tuning

    asked: list[tuple[int, int]] = []

    class RefusingLibrary:
        def __init__(self, _name) -> None:
            def mallopt(param: int, value: int) -> int:
                asked.append((param, value))
                return 0

            self.mallopt = mallopt

    monkeypatch.setattr(malloc_tuning.ctypes, "CDLL", RefusingLibrary)
    with caplog.at_level("INFO", logger="logit_service.server.malloc_tuning"):
        assert malloc_tuning.keep_freed_memory() is False
    assert asked == [(-3, 32 << 20)]  # M_MMAP_THRESHOLD first; refused, nothing more is asked
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "glibc refused the malloc thresholds; freed memory may be returned to the kernel every forward")
    ]

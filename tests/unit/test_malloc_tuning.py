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

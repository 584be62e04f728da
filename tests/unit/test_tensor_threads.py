"""`serial_tensor_ops()`: a thread's tensor ops run on that thread alone, and no other thread's count moves.

A thread that runs a parallel tensor op keeps an OpenMP team for as long as it lives; a process with
more OpenMP threads than cores then sleeps between every parallel region of every forward. The
server keeps one team, its compute thread's, by making each of its other threads serial.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import textwrap

import pytest
import torch

from logit_service import tensor_threads
from logit_service.tensor_threads import _thread_count_setters, serial_tensor_ops

pytestmark = pytest.mark.skipif(not _thread_count_setters(), reason="no OpenMP runtime in this process (not a Linux torch wheel)")


def _on_a_new_thread(fn):
    out: dict = {}

    def run() -> None:
        out["value"] = fn()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return out["value"]


def _ops() -> None:
    """An elementwise op, a matmul (MKL's own thread count) and a convolution (oneDNN), each large
    enough to run in parallel where the thread allows it."""
    x = torch.ones(1 << 22)
    x.add_(1)
    x.to(torch.bfloat16)
    torch.mm(torch.ones(256, 256), torch.ones(256, 256))
    torch.nn.functional.conv1d(torch.ones(8, 64, 512), torch.ones(64, 64, 3))


def test_a_serial_thread_counts_one_thread_before_and_after_its_tensor_ops(caplog):
    def serial_then_ops():
        made = serial_tensor_ops()
        before = torch.get_num_threads()
        _ops()
        return made, before, torch.get_num_threads()

    with caplog.at_level(logging.DEBUG, logger="logit_service.tensor_threads"):
        assert _on_a_new_thread(serial_then_ops) == (True, 1, 1)
    assert caplog.records == []


def test_where_no_runtime_is_found_a_thread_keeps_its_count_and_says_so(caplog, monkeypatch):
    monkeypatch.setattr(tensor_threads, "_thread_count_setters", lambda: ())
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with caplog.at_level(logging.DEBUG, logger="logit_service.tensor_threads"):
            assert _on_a_new_thread(lambda: (serial_tensor_ops(), torch.get_num_threads())) == (False, 2)
    finally:
        torch.set_num_threads(previous)
    assert [r.getMessage() for r in caplog.records] == ["tensor ops on this thread keep 2 threads: no OpenMP runtime found"]


def test_without_torch_nothing_is_done(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    assert serial_tensor_ops() is False


def test_other_threads_keep_the_process_count():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert _on_a_new_thread(serial_tensor_ops) is True
        assert torch.get_num_threads() == 2  # this thread's
        assert _on_a_new_thread(torch.get_num_threads) == 2  # a thread started afterwards
    finally:
        torch.set_num_threads(previous)


def test_a_serial_thread_starts_no_openmp_team_where_an_ordinary_one_does():
    # In a fresh process, so that no other test's threads come and go while threads are counted.
    script = textwrap.dedent(
        """
        import os, threading, torch
        from tests.unit.test_tensor_threads import _ops
        from logit_service.tensor_threads import serial_tensor_ops
        torch.set_num_threads(2)
        _ops()  # this thread's own team, and every library loaded, before counting
        def started_threads(serial):
            out = {}
            def run():
                if serial:
                    serial_tensor_ops()
                before = set(os.listdir("/proc/self/task"))
                _ops()
                out["n"] = len(set(os.listdir("/proc/self/task")) - before)  # threads that appeared (a joined one may still be leaving)
            t = threading.Thread(target=run)
            t.start()
            t.join()
            return out["n"]
        print(started_threads(True), started_threads(False))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    serial, ordinary = map(int, done.stdout.split())
    assert ordinary >= 1  # the check below could not fail otherwise
    assert serial == 0

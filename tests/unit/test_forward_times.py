"""The lower bound on a forward's time never extrapolates upwards from small calls."""

from __future__ import annotations

import pytest

from logit_service.server.forward_times import ForwardTimes


def test_nothing_measured_refuses_nothing():
    assert ForwardTimes().lower_bound_s(1 << 20) == 0.0


def test_a_tiny_call_bounds_larger_ones_only_by_its_own_time():
    times = ForwardTimes()
    times.record(2, 0.008)  # overhead-bound: 250 tokens/s
    assert times.lower_bound_s(16384) == pytest.approx(0.008)


def test_a_larger_call_scales_down_linearly():
    times = ForwardTimes()
    times.record(4096, 2.0)
    assert times.lower_bound_s(1024) == pytest.approx(0.5)
    assert times.lower_bound_s(8192) == pytest.approx(2.0)


def test_the_fastest_measurement_of_a_size_is_kept():
    times = ForwardTimes()
    times.record(1000, 5.0)  # slowed by contention
    times.record(1000, 1.0)
    times.record(1000, 3.0)
    assert times.lower_bound_s(500) == pytest.approx(0.5)


def test_the_tightest_of_the_bounds_is_used():
    times = ForwardTimes()
    times.record(100, 0.3)
    times.record(10_000, 2.0)
    assert times.lower_bound_s(5000) == pytest.approx(1.0)  # 2.0 × 5000/10000 beats 0.3

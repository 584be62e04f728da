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


def test_a_measurement_of_no_tokens_or_no_time_is_not_kept():
    times = ForwardTimes()
    times.record(0, 1.0)
    times.record(-3, 1.0)
    assert times.lower_bound_s(8) == 0.0
    times.record(5, 0.0)  # a zero time would otherwise be the fastest rate of its size for good
    times.record(5, 1.0)
    assert times.lower_bound_s(5) == pytest.approx(1.0)


def test_a_one_token_call_is_measured_too():
    times = ForwardTimes()
    times.record(1, 0.5)
    assert times.lower_bound_s(1) == pytest.approx(0.5)


def test_each_size_keeps_its_own_fastest_rate():
    times = ForwardTimes()
    times.record(100, 0.3)  # a slower rate than the large call's, but a bound for small calls
    times.record(10_000, 2.0)
    assert times.lower_bound_s(50) == pytest.approx(0.15)


def test_an_equal_rate_does_not_replace_the_kept_measurement():
    times = ForwardTimes()
    times.record(1024, 1.0)
    times.record(1536, 1.5)  # the same rate exactly (2^-10 s per token), in the same size bucket
    assert times.lower_bound_s(1100) == 1.0  # from the kept 1024-token call, which it exceeds

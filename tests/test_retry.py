"""RetryPolicy: exponential back-off counted in attempts without progress, on a fake clock."""

from __future__ import annotations

import random

import pytest

from app.retry import MAX_DELAY, RetryPolicy


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def identity(value: float) -> float:
    return value


def policy(clock: FakeClock, *, max_tries: int = 100, max_time: float = 1e9, factor: float = 5.0) -> RetryPolicy:
    return RetryPolicy(max_tries=max_tries, max_time=max_time, factor=factor, clock=clock, jitter=identity)


def delays(p: RetryPolicy, clock: FakeClock, count: int) -> list[float | None]:
    """Ask for ``count`` delays, sleeping each one on the fake clock."""
    result: list[float | None] = []
    for _ in range(count):
        delay = p.next_delay()
        result.append(delay)
        if delay is not None:
            clock.sleep(delay)
    return result


def test_delays_double_from_the_factor() -> None:
    clock = FakeClock()
    assert delays(policy(clock, factor=5.0), clock, 6) == [5.0, 10.0, 20.0, 40.0, 80.0, 160.0]


def test_fractional_factor_doubles_too() -> None:
    clock = FakeClock()
    assert delays(policy(clock, factor=0.5), clock, 4) == [0.5, 1.0, 2.0, 4.0]


def test_gives_up_after_max_tries_consecutive_failures() -> None:
    clock = FakeClock()
    p = policy(clock, max_tries=3)
    assert delays(p, clock, 3) == [5.0, 10.0, None]
    assert p.failures == 3
    assert p.total_retries == 2


def test_default_seven_tries_allow_six_retries() -> None:
    clock = FakeClock()
    result = delays(policy(clock, max_tries=7, factor=1.0), clock, 7)
    assert result == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, None]


def test_single_try_never_retries() -> None:
    clock = FakeClock()
    assert policy(clock, max_tries=1).next_delay() is None


def test_gives_up_when_the_next_wait_would_exceed_max_time() -> None:
    clock = FakeClock()
    p = policy(clock, max_time=12.0)
    assert p.next_delay() == 5.0
    clock.sleep(5.0)
    assert p.next_delay() is None  # 5 s spent + 10 s wait > 12 s
    assert p.total_retries == 1


def test_wait_ending_exactly_at_max_time_is_allowed() -> None:
    clock = FakeClock()
    assert delays(policy(clock, max_time=15.0), clock, 3) == [5.0, 10.0, None]


def test_time_spent_in_attempts_counts_against_max_time() -> None:
    clock = FakeClock()
    p = policy(clock, max_time=100.0)
    clock.sleep(96.0)  # a slow first attempt
    assert p.next_delay() is None


def test_max_time_zero_never_retries() -> None:
    clock = FakeClock()
    assert policy(clock, max_time=0.0, factor=0.1).next_delay() is None


def test_progress_resets_the_count_and_the_backoff() -> None:
    clock = FakeClock()
    p = policy(clock, max_tries=3)
    assert delays(p, clock, 2) == [5.0, 10.0]
    p.progressed()
    assert p.failures == 0
    assert delays(p, clock, 3) == [5.0, 10.0, None]
    assert p.total_retries == 4


def test_progress_restarts_the_max_time_window() -> None:
    clock = FakeClock()
    p = policy(clock, max_time=20.0)
    clock.sleep(1000.0)  # a long download that kept moving forward
    assert p.next_delay() is None
    p.progressed()
    assert p.next_delay() == 5.0


def test_delays_are_capped_at_max_delay() -> None:
    clock = FakeClock()
    result = delays(policy(clock, factor=100.0), clock, 6)
    assert result == [100.0, 200.0, MAX_DELAY, MAX_DELAY, MAX_DELAY, MAX_DELAY]
    assert MAX_DELAY == 300.0


def test_factor_above_max_delay_is_capped_from_the_first_wait() -> None:
    clock = FakeClock()
    assert policy(clock, factor=1000.0).next_delay() == MAX_DELAY


def test_zero_factor_retries_immediately() -> None:
    clock = FakeClock()
    assert delays(policy(clock, factor=0.0, max_tries=4), clock, 4) == [0.0, 0.0, 0.0, None]


def test_default_full_jitter_stays_within_zero_and_the_exponential_value() -> None:
    random.seed(1234)
    seen: list[list[float]] = []
    for _ in range(300):
        clock = FakeClock()
        p = RetryPolicy(max_tries=100, max_time=1e9, factor=5.0, clock=clock)
        draws = []
        for _ in range(8):
            delay = p.next_delay()
            assert delay is not None
            draws.append(delay)
        seen.append(draws)
    bounds = [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0]
    for draws in seen:
        for delay, bound in zip(draws, bounds, strict=True):
            assert 0.0 <= delay <= bound
    # Jitter is really applied: the first waits spread over their whole range.
    first = [d[0] for d in seen]
    assert min(first) < 1.0
    assert max(first) > 4.0
    assert len(set(first)) > 250


@pytest.mark.parametrize("factor", [0.05, 1.0, 5.0, 60.0])
def test_jittered_delay_is_checked_against_max_time(factor: float) -> None:
    clock = FakeClock()
    seen: list[float] = []

    def record(value: float) -> float:
        seen.append(value)
        return value * 0.5

    p = RetryPolicy(max_tries=100, max_time=factor * 0.75, factor=factor, clock=clock, jitter=record)
    assert p.next_delay() == factor * 0.5  # the jittered wait fits where the raw one would not
    assert seen == [factor]

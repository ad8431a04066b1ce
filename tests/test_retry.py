"""The retry policy alone decides when a failed delivery is tried again and when it is given up."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from codex_langfuse.ingest.retry import RetryPolicy, not_before

POLICY = RetryPolicy(base=2.0, cap=300.0, retry_for=3600.0)


def middle(low: float, high: float) -> float:
    return (low + high) / 2  # jitter pinned to the step itself


@pytest.mark.parametrize(("attempts", "step"), [(0, 2.0), (1, 2.0), (2, 4.0), (3, 8.0), (8, 256.0), (9, 300.0), (40, 300.0)])
def test_the_step_doubles_per_attempt_up_to_the_cap(attempts, step):
    assert POLICY.delay(attempts, None, jitter=middle) == step


def test_jitter_spreads_each_step_between_half_and_one_and_a_half_of_it():
    assert POLICY.delay(3, None, jitter=lambda low, high: low) == 4.0
    assert POLICY.delay(3, None, jitter=lambda low, high: high) == 12.0
    seen = {POLICY.delay(3, None) for _ in range(200)}
    assert all(4.0 <= delay <= 12.0 for delay in seen) and len(seen) > 100


def test_never_sooner_than_langfuse_asked():
    assert POLICY.delay(1, 120.0, jitter=middle) == 120.0
    assert POLICY.delay(8, 1.0, jitter=middle) == 256.0  # a shorter Retry-After does not hurry the backoff


def test_a_streak_is_given_up_after_retry_for():
    assert not POLICY.gives_up(first_failure=1000.0, now=1000.0 + 3599.9)
    assert POLICY.gives_up(first_failure=1000.0, now=1000.0 + 3600.0)


def test_scheduled_times_round_up_to_whole_seconds_never_early():
    assert not_before(1700000000.2) == datetime.fromtimestamp(1700000001, tz=timezone.utc)
    assert not_before(1700000000.0) == datetime.fromtimestamp(1700000000, tz=timezone.utc)

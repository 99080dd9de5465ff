"""The retry policy, without a server: delays that double from a fifth of a second, spread
by a quarter, and the first bound met (retries, the time budget) named."""

from __future__ import annotations

import pytest

from cicd_db import migrations


def test_retry_delays_double_from_a_fifth_of_a_second_up_to_ten_spread_by_a_quarter() -> None:
    policy = migrations.RetryPolicy()
    for attempt in range(1, 13):
        base = min(0.2 * 2 ** (attempt - 1), 10.0)
        delays = [policy.delay(attempt) for _ in range(200)]
        assert base * 0.75 <= min(delays) <= max(delays) <= base * 1.25
        # Spread, not fixed: runners that met each other do not meet again.
        assert max(delays) - min(delays) > base * 0.25


@pytest.mark.parametrize(
    ("attempt", "waited", "delay", "reason"),
    [
        (3, 0.0, 1.0, None),
        (4, 0.0, 1.0, "gave up after 3 retries"),
        (2, 0.0, 1.0, None),
        (2, 9.0, 1.0, None),  # the budget used up exactly still allows that retry
        (2, 9.0, 1.5, "the retry budget of 10 s is spent"),
    ],
)
def test_retry_policy_gives_up_at_the_first_bound_it_meets(
    attempt: int, waited: float, delay: float, reason: str | None
) -> None:
    policy = migrations.RetryPolicy(retries=3, budget=10.0, waited=waited)
    assert policy.give_up(attempt, delay) == reason


def test_one_retry_allowed_is_said_in_the_singular() -> None:
    assert migrations.RetryPolicy(retries=1).give_up(2, 0.1) == "gave up after 1 retry"

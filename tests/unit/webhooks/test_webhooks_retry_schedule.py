"""The retry schedule: 1 minute doubling to a 1 hour cap, with jitter, for 3 days; disable after 3 days."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.webhooks.service_layer.retry_schedule import (
    DISABLE_AFTER,
    delay,
    endpoint_to_disable,
    next_attempt_at,
)

pytestmark = pytest.mark.unit
T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def test_the_delay_doubles_from_one_minute_to_a_one_hour_cap_without_jitter_at_the_midpoint() -> None:
    assert [delay(n, 0.5) for n in range(1, 10)] == [
        MINUTE, 2 * MINUTE, 4 * MINUTE, 8 * MINUTE, 16 * MINUTE, 32 * MINUTE, 60 * MINUTE, 60 * MINUTE,
        60 * MINUTE]


@pytest.mark.parametrize("failures", [1, 4, 7, 200])
def test_jitter_spreads_a_delay_over_plus_or_minus_ten_percent(failures: int) -> None:
    mid = delay(failures, 0.5)
    assert delay(failures, 0.0) == mid * 0.9
    assert mid * 0.9 <= delay(failures, 0.999) < mid * 1.1


def test_the_schedule_covers_more_than_24_hours_and_gives_up_after_3_days() -> None:
    at, failures, attempts = T0, 0, [T0]
    while True:
        failures += 1
        retry = next_attempt_at(failures, T0, at, 0.5)
        if retry is None:
            break
        at = retry
        attempts.append(at)
    assert attempts[-1] - T0 >= timedelta(hours=24)
    assert attempts[-1] - T0 <= timedelta(days=3)
    assert attempts[-1] - T0 > timedelta(days=3) - timedelta(hours=1)
    # 7 growing delays (1+2+4+8+16+32+60 min = 123 min) then 69 hourly ones fit in the 69 h 57 min left
    assert len(attempts) == 1 + 7 + 69


def test_an_endpoint_is_disabled_once_it_failed_every_attempt_for_3_days() -> None:
    assert not endpoint_to_disable(None, T0)
    assert not endpoint_to_disable(T0, T0 + DISABLE_AFTER - timedelta(seconds=1))
    assert endpoint_to_disable(T0, T0 + DISABLE_AFTER)


def test_failures_are_counted_from_one() -> None:
    with pytest.raises(ValueError, match="1-based"):
        delay(0, 0.5)

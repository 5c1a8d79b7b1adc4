"""When a failed delivery is tried again, when it is abandoned, when its endpoint is disabled.

Exponential backoff with jitter: 1 minute after the first failure, doubling up to 1 hour, then hourly,
for 3 days after the first attempt (about 75 attempts: 63 minutes for the first seven, then one an hour).
An endpoint whose every attempt failed for 3 days is disabled (`DISABLE_AFTER`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

FIRST_DELAY: Final = timedelta(minutes=1)
MAX_DELAY: Final = timedelta(hours=1)
GIVE_UP_AFTER: Final = timedelta(days=3)
DISABLE_AFTER: Final = timedelta(days=3)
JITTER: Final = 0.2  # the delay is spread over +-10 % so retries of many deliveries do not arrive together


def delay(failures: int, jitter: float) -> timedelta:
    """The wait after the `failures`-th consecutive failure (1-based); `jitter` in [0, 1) (random)."""
    if failures < 1:
        raise ValueError("failures is 1-based")
    base: timedelta = min(FIRST_DELAY * (2 ** min(failures - 1, 12)), MAX_DELAY)
    spread: float = 1 - JITTER / 2 + JITTER * jitter
    return base * spread


def next_attempt_at(failures: int, first_attempt_at: datetime, now: datetime, jitter: float) -> datetime | None:
    """When to try again after the `failures`-th failure at `now`, or None: abandon (3 days are over)."""
    at = now + delay(failures, jitter)
    return None if at - first_attempt_at > GIVE_UP_AFTER else at


def endpoint_to_disable(failing_since: datetime | None, now: datetime) -> bool:
    """Whether an endpoint failing since `failing_since` (None: its last attempt succeeded) is disabled."""
    return failing_since is not None and now - failing_since >= DISABLE_AFTER

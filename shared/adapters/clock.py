"""Clock adapters: the system clock, a manual clock for tests, and the simulated billing clock that all
services share through PostgreSQL (advanced via POST /v1/clock/advance, like a Stripe test clock)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from shared.adapters.postgres.schema.core import billing_clock
from shared.errors import TerminalError


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """An in-process clock that moves only when told to (unit tests and single-process simulations)."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock needs an aware datetime")
        self._now = start.astimezone(UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta) -> datetime:
        with self._lock:
            self._now += delta
            return self._now

    def set(self, at: datetime) -> None:
        with self._lock:
            self._now = at.astimezone(UTC)


class ClockRefusedError(TerminalError):
    """The clock cannot be moved (it is real, or the move goes backwards)."""


class DatabaseClock:
    """The simulated billing clock: one row in `billing_clock`, shared by every process of an environment.

    It only moves forward; the scheduler turns each advance into period-close, trial-end and expiry
    commands, so time reaches each subscription as a message in its ordered stream.
    """

    def __init__(self, engine: sa.Engine, start: datetime, clock_id: str = "default") -> None:
        self._engine = engine
        self._start = start.astimezone(UTC)
        self._id = clock_id

    def ensure(self) -> datetime:
        with self._engine.begin() as conn:
            conn.execute(insert(billing_clock).values(clock_id=self._id, now=self._start)
                         .on_conflict_do_nothing(index_elements=["clock_id"]))
            now: datetime = conn.execute(sa.select(billing_clock.c.now)
                                         .where(billing_clock.c.clock_id == self._id)).scalar_one()
            return now

    def now(self) -> datetime:
        with self._engine.connect() as conn:
            value = conn.execute(sa.select(billing_clock.c.now)
                                 .where(billing_clock.c.clock_id == self._id)).scalar_one_or_none()
        if value is None:
            return self.ensure()
        now: datetime = value.astimezone(UTC)
        return now

    def advance(self, delta: timedelta) -> datetime:
        if delta <= timedelta(0):
            raise ClockRefusedError("the billing clock only moves forward")
        self.ensure()
        with self._engine.begin() as conn:
            value: datetime = conn.execute(
                sa.update(billing_clock).where(billing_clock.c.clock_id == self._id)
                .values(now=billing_clock.c.now + delta, updated_at=sa.func.now())
                .returning(billing_clock.c.now)).scalar_one()
        return value.astimezone(UTC)

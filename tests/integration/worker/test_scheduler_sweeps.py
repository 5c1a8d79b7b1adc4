"""The scheduler sweeps each period end once (issue 17): after a sweep reached the end, a tick looks only at period
ends that fell due since, and every due period end is looked at again by the next full sweep (every
`scheduler_full_sweep_s`, and whenever a scheduler starts). Before, every tick passed over every due subscription
until it had closed (~23 ms of PostgreSQL a tick with 10,000 due, for the whole of a month's close), so a close
that nothing held back was emitted on the next tick whenever its period had ended."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from services.billing_worker.entrypoints.scheduler import Scheduler
from shared.adapters.clock import DatabaseClock
from shared.adapters.postgres.schema.billing import invoices, payment_attempts, scheduled_commands
from shared.config import Settings
from shared.contracts.messages import CreateSubscription
from tests.integration.worker.billing_support import Billing

pytestmark = pytest.mark.integration

JAN_1, JAN_15 = datetime(2032, 1, 1, tzinfo=UTC), datetime(2032, 1, 15, tzinfo=UTC)
SECOND = timedelta(seconds=1)


def subscribe(billing: Billing, start: datetime) -> str:
    """A subscription whose first invoice is settled (an unsettled charge would hold its close back)."""
    sub = f"sub_sweep_{uuid.uuid4().hex[:8]}"
    billing.send(CreateSubscription(subscription_id=sub, customer_id=f"cus_{sub}", plan_id="pro", currency="USD",
                                    start_at=start, payment_method_id="pm_card_visa"), start)
    with billing.engine.begin() as conn:
        conn.execute(sa.update(payment_attempts).where(payment_attempts.c.subscription_id == sub)
                     .values(status="cancelled", completed_at=start))
        conn.execute(sa.update(invoices).where(invoices.c.subscription_id == sub)
                     .values(status="paid", paid_at=start, amount_paid_minor=invoices.c.amount_due_minor))
    return sub


def closes_emitted(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.select(scheduled_commands.c.subscription_id).where(
            scheduled_commands.c.kind == "period.close")).scalars())


def test_a_tick_sweeps_what_fell_due_since_and_a_full_sweep_everything(settings: Settings,
                                                                       engine: sa.Engine) -> None:
    billing = Billing(engine)
    first, later = subscribe(billing, JAN_1), subscribe(billing, JAN_15)  # periods end Feb 1 and Feb 15
    scheduler = Scheduler(settings, engine, DatabaseClock(engine, JAN_1), full_sweep_s=3600)
    try:
        scheduler.tick(datetime(2032, 2, 1, tzinfo=UTC) + SECOND)  # the first tick is a full sweep
        assert closes_emitted(engine) == {first}

        # a period end at an instant already swept (created afterwards, as a close held back until now would be)
        behind = subscribe(billing, JAN_1)
        scheduler.tick(datetime(2032, 2, 15, tzinfo=UTC) + SECOND)
        assert closes_emitted(engine) == {first, later}  # the tick looked only at what fell due since Feb 1
    finally:
        scheduler.stop()

    often = Scheduler(settings, engine, DatabaseClock(engine, JAN_1), full_sweep_s=0.5)
    try:
        often.tick(datetime(2032, 2, 15, tzinfo=UTC) + 2 * SECOND)  # a scheduler starts with a full sweep
        assert closes_emitted(engine) == {first, later, behind}
        again = subscribe(billing, JAN_1)
        time.sleep(0.6)  # a full sweep is due again
        often.tick(datetime(2032, 2, 15, tzinfo=UTC) + 3 * SECOND)
        assert again in closes_emitted(engine)
    finally:
        often.stop()

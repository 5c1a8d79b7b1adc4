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

from services.billing_worker.entrypoints.scheduler import _DUE_PERIOD_ENDS, BEGINNING, DUNNING_PICKUP, Scheduler
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


def _plan_nodes(node: dict) -> list[dict]:  # type: ignore[type-arg]
    return [node, *(n for child in node.get("Plans", ()) for n in _plan_nodes(child))]


def test_the_due_checks_are_probes_per_candidate_not_joins(engine: sa.Engine) -> None:
    # Planned as anti-joins with statistics taken before a month's close (no open invoice, nothing scheduled),
    # the checks became nested loops over every open invoice and unpublished outbox row for each due
    # subscription while the close made those sets grow: 10-44 s per sweep in a 100k benchmark run.
    with engine.connect() as conn:
        explain = sa.text("EXPLAIN (FORMAT JSON) " + _DUE_PERIOD_ENDS.text).bindparams(
            _DUE_PERIOD_ENDS._bindparams["closable"])
        [plan] = conn.execute(explain, {
            "close_before": datetime(2032, 2, 1, tzinfo=UTC), "grace": timedelta(0), "dunning_pickup": DUNNING_PICKUP,
            "commands_topic": "commands.v1", "after_at": BEGINNING, "after_id": "", "limit": 20_000}).scalar_one()
    nodes = _plan_nodes(plan["Plan"])
    assert not [n for n in nodes if n.get("Join Type") in ("Anti", "Semi")]
    probes = {n.get("Relation Name"): n.get("Index Cond", "") for n in nodes if "Index Name" in n}
    assert "subscription_id" in probes["scheduled_commands"] and "subscription_id" in probes["invoices"]


def test_closes_held_back_do_not_hide_the_others(settings: Settings, engine: sa.Engine) -> None:
    billing = Billing(engine)
    start = datetime(2033, 1, 1, tzinfo=UTC)
    subs = sorted(subscribe(billing, start) for _ in range(3))
    with engine.begin() as conn:  # the first two in sweep order still have a charge in flight: held back
        conn.execute(sa.update(payment_attempts).where(payment_attempts.c.subscription_id.in_(subs[:2]))
                     .values(status="in_flight", completed_at=None))
        conn.execute(sa.update(invoices).where(invoices.c.subscription_id.in_(subs[:2])).values(status="open"))
    scheduler = Scheduler(settings, engine, DatabaseClock(engine, JAN_1), batch=2, full_sweep_s=3600)
    try:
        at = datetime(2033, 2, 1, tzinfo=UTC) + SECOND
        assert scheduler.tick(at) == 0  # the page held two held-back closes
        scheduler.tick(at)  # the sweep goes on after them
        assert set(subs) & closes_emitted(engine) == {subs[2]}
    finally:
        scheduler.stop()


def test_the_leader_keeps_its_lock_on_a_session_that_is_not_left_in_a_transaction(settings: Settings,
                                                                                   engine: sa.Engine) -> None:
    scheduler = Scheduler(settings, engine, DatabaseClock(engine, JAN_1))
    try:
        assert scheduler.acquire() and scheduler.acquire()  # the second checks the session it leads on
        assert scheduler._lock_conn is not None
        lock_pid = scheduler._lock_conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        assert scheduler.acquire()
        with engine.connect() as conn:
            state = conn.execute(sa.text("SELECT state FROM pg_stat_activity WHERE pid = :p"), {"p": lock_pid}).scalar()
        assert state == "idle"  # not "idle in transaction" (which a timeout on the role would end)
    finally:
        scheduler.stop()

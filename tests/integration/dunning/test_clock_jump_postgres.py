"""The clock-jump scenarios (tests/unit/dunning/test_clock_jump.py) on the PostgreSQL store, plus what only
the PostgreSQL store knows: the wall-clock bound on a retry whose outcome never comes, and a case opened at
the billing instant its failed charge was decided."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from services.dunning.handlers import DunningHandlers
from services.dunning.reconciliation import PaymentAttemptReader
from services.dunning.repository import PostgresDunningStore
from shared.adapters.clock import ManualClock
from shared.adapters.postgres.schema.billing import INVOICE_KINDS, invoices, payment_attempts
from shared.adapters.postgres.schema.core import customers
from shared.adapters.postgres.schema.dunning import dunning_cases
from shared.domain.dunning import DunningPolicy
from tests.integration.dunning.test_scenarios_postgres import PostgresProbe
from tests.unit.dunning.scenarios import CUSTOMER_EMAIL, FIRST_FAILURE, World, unique_ids
from tests.unit.dunning.test_clock_jump import ClockJumpScenarios

pytestmark = pytest.mark.integration


class WallClock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def make_world(engine: sa.Engine, wall: WallClock | None = None) -> World:
    subscription_id, customer_id, invoice_id = unique_ids()
    subscription_id, customer_id, invoice_id = (f"{subscription_id}_j", f"{customer_id}_j", f"{invoice_id}_j")
    with engine.begin() as conn:
        conn.execute(customers.insert().values(customer_id=customer_id, external_id=f"ext-{customer_id}",
                                               kind="user", name="Ada", email=CUSTOMER_EMAIL, currency="USD"))
    policy = DunningPolicy()
    store = PostgresDunningStore(engine, policy, PaymentAttemptReader())
    clock = ManualClock(FIRST_FAILURE)
    options = {"wall_clock": wall} if wall is not None else {}
    return World(lambda: DunningHandlers(store, clock, policy=policy, channel="log", **options), clock,
                 PostgresProbe(engine, subscription_id, customer_id), subscription_id, customer_id, invoice_id)


class TestClockJumpOnPostgres(ClockJumpScenarios):
    @pytest.fixture
    def world(self, engine: sa.Engine) -> World:
        return make_world(engine)


def test_a_retry_whose_outcome_never_comes_holds_the_schedule_only_for_a_bounded_wall_clock_time(
        engine: sa.Engine) -> None:
    wall = WallClock()
    world = make_world(engine, wall)
    world.payment_failed(attempt_no=1)
    world.clock.set(world.day(31))
    world.handlers.run_due()
    assert [c.type for c in world.probe.commands()] == ["payment.retry"]

    wall.now += timedelta(minutes=5)
    world.handlers.run_due()
    assert [c.type for c in world.probe.commands()] == ["payment.retry"]

    wall.now += timedelta(hours=1)  # the worker never answered (a refused or dead-lettered command)
    world.handlers.run_due()
    # The schedule goes on (this test's wall clock is an hour ahead of the rows' own created_at, so every
    # later retry looks overdue too and the case runs to its end).
    assert [(c.type, c.occurred_at) for c in world.probe.commands()][:2] == [
        ("payment.retry", world.day(3)), ("payment.retry", world.day(5))]


def test_a_case_opens_at_the_billing_instant_its_failed_charge_was_decided(engine: sa.Engine) -> None:
    world = make_world(engine)
    decided = FIRST_FAILURE - timedelta(days=20)
    with engine.begin() as conn:
        conn.execute(invoices.insert().values(
            invoice_id=world.invoice_id, subscription_id=world.subscription_id, customer_id=world.customer_id,
            kind=INVOICE_KINDS[0], period_start=decided - timedelta(days=30), period_end=decided, status="open",
            number=f"N-{world.invoice_id}", currency="USD", total_minor=2000, amount_due_minor=2000))
        conn.execute(payment_attempts.insert().values(
            attempt_id=f"{world.invoice_id}-a1", invoice_id=world.invoice_id, attempt_no=1,
            subscription_id=world.subscription_id, customer_id=world.customer_id, amount_minor=2000,
            currency="USD", idempotency_key=f"{world.invoice_id}-k1", status="declined", requested_at=decided))

    world.payment_failed(attempt_no=1)  # the news arrives 20 days late (a clock jump over the charge)

    with engine.connect() as conn:
        opened_at = conn.execute(sa.select(dunning_cases.c.opened_at)
                                 .where(dunning_cases.c.invoice_id == world.invoice_id)).scalar_one()
    assert opened_at == decided
    assert [(c.type, c.occurred_at) for c in world.probe.commands()] == [
        ("payment.retry", decided + timedelta(days=3))]

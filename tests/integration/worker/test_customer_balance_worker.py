"""The customer credit balance, void, mark-uncollectible and one-off charges (issue 14, H1) on real PostgreSQL
through the real handler table (the worker's bootstrap, the SQL unit of work): hand-computed figures.

basic_monthly: USD 10.00 a month in advance; premium_monthly_immediate: USD 20.00, downgrades at once.
The balance's concurrency: many workers (each its own transaction, as partitions are) drawing one customer's
balance at once never overdraw it.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from services.billing_worker.bootstrap import billing_handlers, message_bus, sql_unit_of_work
from shared.adapters.catalog_file import load_default_catalog
from shared.adapters.postgres import customer_balance
from shared.adapters.postgres.engine import make_engine
from shared.adapters.postgres.schema.billing import customer_balance_entries, invoices, payment_attempts
from shared.contracts.envelope import new_envelope
from shared.contracts.messages import (
    TYPE_OF,
    ChangePlan,
    ClosePeriod,
    CreateOneOffInvoice,
    CreateSubscription,
    MarkInvoiceUncollectible,
    OneOffLineRequest,
    VoidInvoice,
)
from shared.domain.customer_balance import BalanceEntry, BalanceEntryKind
from tests.integration.worker.billing_support import Billing

pytestmark = pytest.mark.integration

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
JAN_16_12 = datetime(2026, 1, 16, 12, tzinfo=UTC)  # half of January (31 days) gone
JAN_20 = datetime(2026, 1, 20, tzinfo=UTC)
FEB_1 = datetime(2026, 2, 1, tzinfo=UTC)
CONCURRENT = 12


@pytest.fixture(scope="module")
def billing(engine) -> Billing:  # type: ignore[no-untyped-def]
    return Billing(engine)


def subscribe(billing: Billing, plan: str = "basic_monthly", **extra: object) -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:10]
    sub, cus = f"sub_{suffix}", f"cus_{suffix}"
    env = billing.send(CreateSubscription(subscription_id=sub, customer_id=cus, plan_id=plan, currency="USD",
                                          payment_method_id="pm_card_visa", trial_days=0, **extra), JAN_1)
    assert billing.outcome(env).status == "applied", billing.outcome(env)
    return sub, cus


def credit(billing: Billing, cus: str, amount: int) -> None:
    with billing.engine.begin() as conn:
        customer_balance.apply_entry(conn, BalanceEntry(
            entry_id=f"manual-{uuid.uuid4().hex}", customer_id=cus, currency="USD", amount_minor=amount,
            kind=BalanceEntryKind.ADJUSTMENT, occurred_at=JAN_1, description="test credit"))


def balance(billing: Billing, cus: str) -> tuple[int, list[tuple[str, int]]]:
    with billing.engine.connect() as conn:
        rows = customer_balance.balances_of(conn, cus)
        entries = conn.execute(sa.select(customer_balance_entries.c.kind, customer_balance_entries.c.amount_minor)
                               .where(customer_balance_entries.c.customer_id == cus)
                               .order_by(customer_balance_entries.c.seq)).all()
    return (rows[0].balance_minor if rows else 0), [(e.kind, e.amount_minor) for e in entries]


def attempts(billing: Billing, invoice_id: str) -> list[tuple[int, str, int]]:
    with billing.engine.connect() as conn:
        return [(r.attempt_no, r.status, r.amount_minor) for r in conn.execute(
            sa.select(payment_attempts).where(payment_attempts.c.invoice_id == invoice_id)
            .order_by(payment_attempts.c.attempt_no))]


def test_a_downgrade_credit_lands_in_the_balance_and_the_next_close_draws_it(billing: Billing) -> None:
    sub, cus = subscribe(billing, "premium_monthly_immediate")

    billing.send(ChangePlan(subscription_id=sub, customer_id=cus, plan_id="basic_monthly"), JAN_16_12)
    _start, change = billing.invoices(sub)
    # 15.5 of 31 days left: premium -10.00, basic +5.00 = -5.00, credited to the balance; paid at 0
    assert billing.lines(change.invoice_id) == [("proration", -1000), ("proration", 500)]
    assert (change.total_minor, change.amount_due_minor, change.status) == (-500, 0, "paid")
    assert balance(billing, cus) == (500, [("invoice_credit", 500)])
    assert billing.subscription(sub).carried_credit_minor == 0

    billing.send(ClosePeriod(subscription_id=sub, customer_id=cus, period_end=FEB_1), FEB_1)

    close = billing.invoices(sub)[-1]
    # February's basic fee 10.00: 5.00 drawn from the balance, 5.00 charged
    assert billing.lines(close.invoice_id) == [("fee", 1000)]
    assert (close.total_minor, close.balance_applied_minor, close.amount_due_minor, close.status) == (
        1000, 500, 500, "open")
    assert attempts(billing, close.invoice_id) == [(1, "pending", 500)]
    assert balance(billing, cus) == (0, [("invoice_credit", 500), ("invoice_draw", -500)])


def test_one_off_charges_fully_and_partly_covered_by_the_balance(billing: Billing) -> None:
    sub, cus = subscribe(billing)
    [start] = billing.invoices(sub)
    credit(billing, cus, 2_000)

    covered, partly = billing.send_batch([
        CreateOneOffInvoice(subscription_id=sub, customer_id=cus, lines=[
            OneOffLineRequest(description="Onboarding", amount_minor=1_200)]),
        CreateOneOffInvoice(subscription_id=sub, customer_id=cus, lines=[
            OneOffLineRequest(description="Training day", amount_minor=0, quantity=3, unit_amount_minor=500)]),
    ], JAN_20)

    one = next(i for i in billing.invoices(sub) if i.invoice_id == billing.outcome(covered).result["invoice_id"])
    two = next(i for i in billing.invoices(sub) if i.invoice_id == billing.outcome(partly).result["invoice_id"])
    # 12.00 fully covered by the 20.00 balance: paid at once, no attempt
    assert (one.kind, one.total_minor, one.balance_applied_minor, one.amount_due_minor, one.status) == (
        "manual", 1200, 1200, 0, "paid")
    assert attempts(billing, one.invoice_id) == []
    # 3 x 5.00 = 15.00: the 8.00 left drawn, 7.00 charged
    assert (two.total_minor, two.balance_applied_minor, two.amount_due_minor, two.status) == (1500, 800, 700, "open")
    assert attempts(billing, two.invoice_id) == [(1, "pending", 700)]
    assert balance(billing, cus) == (0, [("adjustment", 2000), ("invoice_draw", -1200), ("invoice_draw", -800)])
    # both at one billing instant, numbered one after the other after the first invoice
    seq = [i.number_seq for i in (start, one, two)]
    assert seq == [seq[0], seq[0] + 1, seq[0] + 2]


def test_voiding_an_open_invoice_cancels_its_attempt_restores_the_balance_and_the_number_stays_used(
        billing: Billing) -> None:
    sub, cus = subscribe(billing)
    credit(billing, cus, 300)
    charge = billing.send(CreateOneOffInvoice(subscription_id=sub, customer_id=cus, lines=[
        OneOffLineRequest(description="Setup", amount_minor=1_000)]), JAN_20)
    invoice_id = billing.outcome(charge).result["invoice_id"]
    assert attempts(billing, invoice_id) == [(1, "pending", 700)]  # 10.00 less the 3.00 balance

    void = billing.send(VoidInvoice(subscription_id=sub, customer_id=cus, invoice_id=invoice_id,
                                    reason="duplicate"), JAN_20)

    assert billing.outcome(void).status == "applied"
    voided = next(i for i in billing.invoices(sub) if i.invoice_id == invoice_id)
    assert (voided.status, voided.voided_at) == ("void", JAN_20) and voided.number is not None
    assert attempts(billing, invoice_id) == [(1, "cancelled", 700)]
    assert balance(billing, cus) == (300, [("adjustment", 300), ("invoice_draw", -300), ("void_restore", 300)])
    again = billing.send(VoidInvoice(subscription_id=sub, customer_id=cus, invoice_id=invoice_id), JAN_20)
    assert (billing.outcome(again).status, billing.outcome(again).error_code) == ("rejected", "invoice_not_voidable")
    after = billing.send(CreateOneOffInvoice(subscription_id=sub, customer_id=cus, lines=[
        OneOffLineRequest(description="Setup", amount_minor=1_000)]), JAN_20)
    nxt = next(i for i in billing.invoices(sub) if i.invoice_id == billing.outcome(after).result["invoice_id"])
    assert nxt.number_seq == voided.number_seq + 1


def test_marking_an_open_invoice_uncollectible_cancels_its_pending_attempt(billing: Billing) -> None:
    sub, cus = subscribe(billing)
    [start] = billing.invoices(sub)

    mark = billing.send(MarkInvoiceUncollectible(subscription_id=sub, customer_id=cus,
                                                 invoice_id=start.invoice_id), JAN_20)

    assert billing.outcome(mark).status == "applied"
    assert billing.invoices(sub)[0].status == "uncollectible"
    assert attempts(billing, start.invoice_id) == [(1, "cancelled", 1000)]
    again = billing.send(MarkInvoiceUncollectible(subscription_id=sub, customer_id=cus,
                                                  invoice_id=start.invoice_id), JAN_20)
    assert billing.outcome(again).error_code == "invoice_not_open"


@pytest.fixture(scope="module")
def wide_engine(settings) -> Iterator[sa.Engine]:  # type: ignore[no-untyped-def]
    eng = make_engine(settings, pool_size=CONCURRENT)
    yield eng
    eng.dispose()


def test_workers_drawing_one_customers_balance_at_once_never_overdraw_it(wide_engine: sa.Engine) -> None:
    """12 subscriptions of one customer (12 partitions, 12 transactions at once) each charge 10.00 while the
    customer holds 35.00: exactly 35.00 is drawn (three invoices covered, one 5.00 short, eight charged)."""
    catalog = load_default_catalog()
    bus, unit_of_work = message_bus(billing_handlers()), sql_unit_of_work(catalog)
    cus = f"cus_{uuid.uuid4().hex[:10]}"
    with wide_engine.begin() as conn:
        customer_balance.apply_entry(conn, BalanceEntry(
            entry_id=f"race-{cus}", customer_id=cus, currency="USD", amount_minor=3_500,
            kind=BalanceEntryKind.ADJUSTMENT, occurred_at=JAN_1, description="race"))
    commands = []
    for _ in range(CONCURRENT):
        payload = CreateSubscription(subscription_id=f"sub_{uuid.uuid4().hex[:12]}", customer_id=cus,
                                     plan_id="basic_monthly", currency="USD", trial_days=0,
                                     payment_method_id="pm_card_visa")
        commands.append((new_envelope(TYPE_OF[CreateSubscription], payload.model_dump(mode="json"),
                                      producer="test", occurred_at=JAN_1), payload))
    start = threading.Barrier(CONCURRENT)
    errors: list[BaseException] = []

    def run(command: tuple[object, CreateSubscription]) -> None:
        try:
            start.wait()
            with wide_engine.begin() as conn:
                bus.handle(unit_of_work(conn), [command], JAN_1)  # type: ignore[list-item]
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(command,)) for command in commands]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []

    with wide_engine.connect() as conn:
        applied = sorted(conn.execute(sa.select(invoices.c.balance_applied_minor).where(
            invoices.c.customer_id == cus)).scalars().all(), reverse=True)
        left = customer_balance.balances_of(conn, cus)[0].balance_minor
        drawn = conn.execute(sa.select(sa.func.sum(customer_balance_entries.c.amount_minor)).where(
            customer_balance_entries.c.customer_id == cus,
            customer_balance_entries.c.kind == "invoice_draw")).scalar_one()
    assert applied == [1000, 1000, 1000, 500] + [0] * (CONCURRENT - 4)
    assert (left, drawn) == (0, -3_500)


def test_a_draft_voided_during_its_grace_is_stored_void_without_a_number(billing: Billing) -> None:
    sub, cus = subscribe(billing)
    billing.send(ClosePeriod(subscription_id=sub, customer_id=cus, period_end=FEB_1,
                             finalize_after_seconds=86_400), FEB_1)
    [draft] = [i for i in billing.invoices(sub) if i.status == "draft"]

    void = billing.send(VoidInvoice(subscription_id=sub, customer_id=cus, invoice_id=draft.invoice_id), FEB_1)

    assert billing.outcome(void).status == "applied"
    [voided] = [i for i in billing.invoices(sub) if i.invoice_id == draft.invoice_id]
    assert (voided.status, voided.number, attempts(billing, draft.invoice_id)) == ("void", None, [])

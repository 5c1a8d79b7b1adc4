"""Issue 14, item 4 (customer credit balance) on the fake unit of work: a negative invoice credits the balance
instead of the subscription, and every finalisation draws from the balance before charging.

basic_monthly: USD 10.00 a month in advance; premium_monthly: USD 20.00 a month in advance.
"""

from __future__ import annotations

from shared.contracts.messages import ChangePlan, ClosePeriod
from shared.domain.invoice import InvoiceStatus
from tests.unit.worker.test_handlers import FEB_1, JAN_1, Worker

HALF_OF_JANUARY = JAN_1 + (FEB_1 - JAN_1) / 2


def balance(worker: Worker, customer: str) -> tuple[int, list[tuple[str, int, str | None]]]:
    entries = [(e.kind.value, e.amount_minor, e.invoice_id) for e in worker.store.balance_entries.values()
               if e.customer_id == customer]
    return worker.store.balances.get((customer, "USD"), 0), entries


def test_a_downgrade_credit_goes_to_the_balance_and_the_next_close_draws_it_before_charging() -> None:
    worker = Worker()
    sub = worker.subscribe(plan="premium_monthly", trial_days=0)

    worker.send(ChangePlan(subscription_id=sub, customer_id=f"cus_{sub}", plan_id="basic_monthly",
                           timing="immediate"), HALF_OF_JANUARY)

    _start, change = worker.invoices(sub)
    # half of January unused on premium (-10.00), half on basic (+5.00): -5.00, credited to the balance
    assert worker.store.lines(change) == [("proration", -1000), ("proration", 500)]
    assert (change.total.amount_minor, change.amount_due.amount_minor, change.status) == (-500, 0, InvoiceStatus.PAID)
    assert balance(worker, f"cus_{sub}") == (500, [("invoice_credit", 500, change.id)])
    assert worker.store.subscriptions[sub].subscription.carried_credit_minor == 0  # no longer carried there
    assert worker.attempts(change.id) == []

    worker.send(ClosePeriod(subscription_id=sub, customer_id=f"cus_{sub}", period_end=FEB_1), FEB_1)

    close = worker.invoices(sub)[-1]
    # February's basic fee 10.00 in advance, no "Credit carried forward" line: 5.00 drawn from the balance
    assert worker.store.lines(close) == [("fee", 1000)]
    assert (close.total.amount_minor, close.balance_applied_minor, close.amount_due.amount_minor) == (1000, 500, 500)
    assert close.status is InvoiceStatus.OPEN
    assert [(a["attempt_no"], a["amount_minor"]) for a in worker.attempts(close.id)] == [(1, 500)]
    assert balance(worker, f"cus_{sub}") == (0, [("invoice_credit", 500, change.id),
                                                 ("invoice_draw", -500, close.id)])


def test_an_invoice_the_balance_covers_is_paid_at_finalisation_without_an_attempt() -> None:
    worker = Worker()
    worker.store.balances[("cus_sub_1", "USD")] = 2_500
    sub = worker.subscribe(plan="basic_monthly", trial_days=0)

    [start] = worker.invoices(sub)

    assert (start.total.amount_minor, start.balance_applied_minor, start.amount_due.amount_minor) == (1000, 1000, 0)
    assert (start.status, start.amount_paid_minor) == (InvoiceStatus.PAID, 0)
    assert worker.attempts(start.id) == []
    assert balance(worker, f"cus_{sub}") == (1_500, [("invoice_draw", -1000, start.id)])


def test_a_subscription_that_carried_credit_before_the_balance_keeps_it_on_its_next_close() -> None:
    worker = Worker()
    sub = worker.subscribe(plan="basic_monthly", trial_days=0)
    worker.store.subscriptions[sub].subscription.carry_credit(300)  # stored before this change

    worker.send(ClosePeriod(subscription_id=sub, customer_id=f"cus_{sub}", period_end=FEB_1), FEB_1)

    close = worker.invoices(sub)[-1]
    assert worker.store.lines(close) == [("adjustment", -300), ("fee", 1000)]
    assert (close.amount_due.amount_minor, worker.store.subscriptions[sub].subscription.carried_credit_minor) == (
        700, 0)

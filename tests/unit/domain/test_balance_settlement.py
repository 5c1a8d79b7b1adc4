"""Finalisation's balance step and the legacy carried credit, each written once in the domain and called by
both the worker (which records them) and the edge's previews (which apply them to a copy)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.adapters.catalog_file import load_default_catalog
from shared.domain.calendar import Period
from shared.domain.catalog import PlanId
from shared.domain.customer_balance import Settlement, settlement
from shared.domain.errors import InvoiceError
from shared.domain.ids import CustomerId, InvoiceId, SubscriptionId
from shared.domain.invoice import Invoice, InvoiceKey, InvoiceLine, InvoiceReason, LineKind
from shared.domain.money import Money
from shared.domain.subscription import Subscription

AT = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(("total", "applied", "balance", "expected"), [
    (-568, 0, 0, Settlement(credited_minor=568)),  # a downgrade's credit goes to the balance, nothing drawn
    (-568, 0, 1_000, Settlement(credited_minor=568)),
    (1_100, 0, 568, Settlement(drawn_minor=568)),  # 11.00 owed, 5.68 held: 5.32 left to charge
    (1_100, 0, 5_000, Settlement(drawn_minor=1_100)),
    (1_100, 400, 5_000, Settlement(drawn_minor=700)),  # drew 4.00 before: only the rest
    (0, 0, 5_000, Settlement()),
    (1_100, 0, 0, Settlement()),
])
def test_a_negative_total_is_credited_otherwise_the_invoice_draws_what_it_owes(
        total: int, applied: int, balance: int, expected: Settlement) -> None:
    assert settlement(total, applied, balance) == expected


def test_the_balance_moves_by_what_is_credited_less_what_is_drawn() -> None:
    assert Settlement(credited_minor=568).balance_change_minor == 568
    assert Settlement(drawn_minor=568).balance_change_minor == -568


def invoice(amount: int) -> Invoice:
    key = InvoiceKey(SubscriptionId("sub_1"), InvoiceReason.MANUAL, Period(AT, AT.replace(month=2)))
    return Invoice.draft(invoice_id=InvoiceId("in_1"), key=key, customer_id=CustomerId("cus_1"), currency="USD",
                         at=AT, lines=[InvoiceLine(kind=LineKind.FEE, description="fee", amount=Money(amount, "USD"))])


def test_settling_an_invoice_records_its_draw_and_leaves_the_rest_due() -> None:
    owed = invoice(1_100)
    assert owed.settle_balance(568) == Settlement(drawn_minor=568)
    assert (owed.balance_applied_minor, owed.amount_due) == (568, Money(532, "USD"))
    negative = invoice(-568)
    assert negative.settle_balance(1_000) == Settlement(credited_minor=568)
    assert (negative.balance_applied_minor, negative.amount_due) == (0, Money(0, "USD"))


def test_a_finalised_invoice_is_not_settled_again() -> None:
    owed = invoice(1_100)
    owed.settle_balance(0)
    owed.finalize(number="OLB-000001", at=AT)
    with pytest.raises(InvoiceError):
        owed.settle_balance(500)


def test_a_carried_credit_is_billed_as_one_adjustment_line_on_the_next_close() -> None:
    sub = Subscription.start(subscription_id=SubscriptionId("sub_1"), customer_id=CustomerId("cus_1"),
                             plan=load_default_catalog().plan(PlanId("basic_monthly")), at=AT, trial_days=0)
    assert sub.carried_credit_lines("USD") == []
    sub.carry_credit(568)  # left by a negative invoice before the customer balance existed
    assert sub.carried_credit_lines("USD") == [InvoiceLine(kind=LineKind.ADJUSTMENT,
                                                           description="Credit carried forward",
                                                           amount=Money(-568, "USD"))]
    assert sub.take_carried_credit() == 568 and sub.carried_credit_lines("USD") == []

"""The customer balance's rules (shared/domain/customer_balance.py): the draw, the sign of each kind, never
below zero, deterministic entry ids."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.domain.calendar import Period
from shared.domain.customer_balance import (
    BalanceEntry,
    BalanceEntryKind,
    InsufficientBalanceError,
    balance_after,
    balance_entry_id,
    draw_amount,
)
from shared.domain.errors import InvalidValueError
from shared.domain.ids import CustomerId, InvoiceId, SubscriptionId
from shared.domain.invoice import Invoice, InvoiceKey, InvoiceLine, InvoiceReason, InvoiceStatus, LineKind
from shared.domain.money import Money
from shared.errors import refusal_code

AT = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(("balance", "owed", "drawn"), [
    (1_000, 2_500, 1_000),  # partly covered: the rest is charged
    (5_000, 2_500, 2_500),  # fully covered: the rest of the balance stays
    (0, 2_500, 0),
    (1_000, 0, 0),  # nothing owed (a negative or zero invoice) draws nothing
    (1_000, -300, 0),
])
def test_an_invoice_draws_what_it_owes_up_to_what_the_balance_holds(balance: int, owed: int, drawn: int) -> None:
    assert draw_amount(balance, owed) == drawn


def test_a_debit_may_not_take_the_balance_below_zero() -> None:
    assert balance_after("cus_1", "USD", 1_000, -1_000) == 0
    assert balance_after("cus_1", "USD", 0, 250) == 250
    with pytest.raises(InsufficientBalanceError) as refused:
        balance_after("cus_1", "USD", 1_000, -1_001)
    assert refusal_code(refused.value) == "insufficient_balance"


def entry(kind: str, amount: int) -> BalanceEntry:
    return BalanceEntry(entry_id="cbe_1", customer_id="cus_1", currency="USD", amount_minor=amount,
                        kind=BalanceEntryKind(kind), occurred_at=AT, description="x")


def test_each_kind_moves_the_balance_in_its_own_direction() -> None:
    assert entry("invoice_credit", 500).amount_minor == 500
    assert entry("invoice_draw", -500).amount_minor == -500
    assert entry("adjustment", -500).amount_minor == -500
    assert entry("adjustment", 500).amount_minor == 500
    for kind, amount in [("invoice_draw", 500), ("credit_note", -1), ("void_restore", -1),
                         ("invoice_credit", -1), ("adjustment", 0)]:
        with pytest.raises(InvalidValueError):
            entry(kind, amount)


def test_entry_ids_are_derived_from_what_the_entry_is_about() -> None:
    assert balance_entry_id("invoice_draw", "in_1") == balance_entry_id(BalanceEntryKind.INVOICE_DRAW, "in_1")
    assert balance_entry_id("invoice_draw", "in_1") != balance_entry_id("void_restore", "in_1")
    assert balance_entry_id("invoice_draw", "in_1").startswith("cbe_")


def test_an_invoice_draws_the_balance_before_finalisation_and_owes_only_the_rest() -> None:
    def invoice(amount: int) -> Invoice:
        key = InvoiceKey(SubscriptionId("sub_1"), InvoiceReason.MANUAL, Period(AT, AT.replace(month=2)))
        return Invoice.draft(invoice_id=InvoiceId("in_1"), key=key, customer_id=CustomerId("cus_1"), currency="USD",
                             at=AT, lines=[InvoiceLine(kind=LineKind.FEE, description="fee",
                                                       amount=Money(amount, "USD"))])

    partly = invoice(1_000)
    assert partly.apply_balance(400) == 400 and partly.amount_due == Money(600, "USD")
    partly.finalize(number="OLB-000001", at=AT)
    assert partly.status is InvoiceStatus.OPEN

    covered = invoice(1_000)
    assert covered.apply_balance(5_000) == 1_000
    covered.finalize(number="OLB-000002", at=AT)
    assert (covered.status, covered.amount_due, covered.amount_paid_minor) == (InvoiceStatus.PAID, Money(0, "USD"), 0)

    negative = invoice(-300)
    assert negative.apply_balance(5_000) == 0 and negative.credit_to_carry_forward == Money(300, "USD")

"""An invoice sums its lines once per set of lines (the total is kept with the lines it was summed from): the
total must still be the sum of the lines after every change to them, and a copy must not keep a stale sum."""

from __future__ import annotations

import copy
import dataclasses
from datetime import UTC, datetime

from shared.domain.calendar import Period
from shared.domain.ids import CustomerId, InvoiceId, SubscriptionId
from shared.domain.invoice import Invoice, InvoiceKey, InvoiceLine, InvoiceReason, LineKind
from shared.domain.money import Money, sum_money

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
FEB_1 = datetime(2026, 2, 1, tzinfo=UTC)


def _line(kind: LineKind, minor: int) -> InvoiceLine:
    return InvoiceLine(kind=kind, description=kind.value, amount=Money(minor, "USD"))


def _draft() -> Invoice:
    return Invoice.draft(invoice_id=InvoiceId("in_1"), customer_id=CustomerId("cus_1"), currency="USD", at=FEB_1,
                         key=InvoiceKey(SubscriptionId("sub_1"), InvoiceReason.PERIOD_CLOSE, Period(JAN_1, FEB_1)))


def _sum(invoice: Invoice) -> Money:
    return sum_money((line.amount for line in invoice.lines), "USD")


def test_the_total_follows_every_change_of_the_lines() -> None:
    invoice = _draft()
    assert invoice.total == Money(0, "USD")
    invoice.add_line(_line(LineKind.FEE, 900))
    assert invoice.total == _sum(invoice) == Money(900, "USD")
    invoice.add_line(_line(LineKind.DISCOUNT, -90))
    assert invoice.total == _sum(invoice) == Money(810, "USD")
    invoice.apply_tax(800)  # replaces the lines with a tax line added
    assert invoice.total == _sum(invoice) == Money(875, "USD")
    invoice.add_line(_line(LineKind.USAGE, 100))  # re-taxed
    assert invoice.total == _sum(invoice) == Money(983, "USD")
    invoice.apply_tax(0)
    assert invoice.total == _sum(invoice) == Money(910, "USD")
    invoice.lines = (_line(LineKind.CREDIT, -50),)  # a repository's assignment
    assert invoice.total == Money(-50, "USD")
    assert invoice.amount_due == Money(0, "USD") and invoice.credit_to_carry_forward == Money(50, "USD")


def test_the_summed_total_is_not_part_of_the_invoices_repr_or_constructor() -> None:
    invoice = _draft()
    invoice.add_line(_line(LineKind.FEE, 900))
    assert invoice.total == Money(900, "USD")
    assert "_summed" not in repr(invoice)
    assert "_summed" not in {f.name for f in dataclasses.fields(Invoice) if f.init}
    rebuilt = dataclasses.replace(invoice, lines=(_line(LineKind.FEE, 100),))
    assert rebuilt.total == Money(100, "USD")


def test_a_copy_sums_its_own_lines() -> None:
    invoice = _draft()
    invoice.add_line(_line(LineKind.FEE, 900))
    assert invoice.total == Money(900, "USD")
    copied = copy.deepcopy(invoice)
    copied.add_line(_line(LineKind.USAGE, 5))
    assert (invoice.total, copied.total) == (Money(900, "USD"), Money(905, "USD"))

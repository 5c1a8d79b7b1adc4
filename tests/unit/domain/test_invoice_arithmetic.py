"""The invoice's columns, each defined once (issue 14, item 8): `subtotal` is the charges before discounts,
included credits and tax (Stripe's meaning; before, it was after the discount and the credits)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from shared.domain.calendar import Period
from shared.domain.ids import CustomerId, InvoiceId, SubscriptionId
from shared.domain.invoice import Invoice, InvoiceKey, InvoiceLine, InvoiceReason, LineKind
from shared.domain.money import Money

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
FEB_1 = datetime(2026, 2, 1, tzinfo=UTC)


def usd(minor: int) -> Money:
    return Money(minor, "USD")


def test_subtotal_is_the_charges_before_discount_credits_and_tax() -> None:
    invoice = Invoice.draft(invoice_id=InvoiceId("in_1"), customer_id=CustomerId("cus_1"), currency="USD", at=FEB_1,
                            key=InvoiceKey(SubscriptionId("sub_1"), InvoiceReason.PERIOD_CLOSE, Period(JAN_1, FEB_1)))
    invoice.add_lines([
        InvoiceLine(kind=LineKind.USAGE, description="Usage", amount=usd(500), quantity=Decimal(5_000_000)),
        InvoiceLine(kind=LineKind.CREDIT, description="Included credits", amount=usd(-200)),
        InvoiceLine(kind=LineKind.ADJUSTMENT, description="Late usage", amount=usd(25)),
        InvoiceLine(kind=LineKind.FEE, description="Pro", amount=usd(900)),
        InvoiceLine(kind=LineKind.DISCOUNT, description="Discount (WELCOME20)", amount=usd(-245)),
    ])
    invoice.apply_tax(1000)

    # charges 500 + 25 + 900 = 1425; discount 245; credits 200; tax 10 % of 980 = 98; total 1078
    assert (invoice.subtotal, invoice.discount, invoice.credits_applied, invoice.tax, invoice.total) == (
        usd(1425), usd(245), usd(200), usd(98), usd(1078))
    assert invoice.total == invoice.subtotal - invoice.discount - invoice.credits_applied + invoice.tax
    assert invoice.pre_tax_total == usd(980)

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.domain.calendar import Period
from shared.domain.errors import InvalidTransitionError, InvoiceError
from shared.domain.events import InvoiceFinalized, InvoicePaid
from shared.domain.ids import CustomerId, InvoiceId, SubscriptionId
from shared.domain.invoice import (
    INVOICE_TRANSITIONS,
    Invoice,
    InvoiceKey,
    InvoiceLine,
    InvoiceReason,
    InvoiceStatus,
    LineKind,
    format_invoice_number,
    tax_amount,
)
from shared.domain.money import Money, UnitPrice, line_amount

pytestmark = pytest.mark.unit

JANUARY = Period(datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC))
AT = datetime(2024, 2, 1, tzinfo=UTC)


def draft(currency: str = "USD", lines: tuple[InvoiceLine, ...] = ()) -> Invoice:
    return Invoice.draft(
        invoice_id=InvoiceId("inv_1"),
        key=InvoiceKey(SubscriptionId("sub_1"), InvoiceReason.PERIOD_CLOSE, JANUARY),
        customer_id=CustomerId("cus_1"),
        currency=currency,
        at=AT,
        lines=lines,
    )


def fee(minor: int, currency: str = "USD") -> InvoiceLine:
    return InvoiceLine(kind=LineKind.FEE, description="fee", amount=Money(minor, currency))


def test_tax_is_one_line_on_the_taxable_lines_rounded_once():
    invoice = draft(
        lines=(fee(1000), InvoiceLine(kind=LineKind.DISCOUNT, description="coupon", amount=Money(-333, "USD")))
    )
    invoice.add_line(
        InvoiceLine(kind=LineKind.ADJUSTMENT, description="not taxed", amount=Money(100, "USD"), taxable=False)
    )
    invoice.apply_tax(1900)  # 19 %
    assert invoice.taxable_base == Money(667, "USD")
    assert invoice.tax == Money(127, "USD")  # 126.73 -> 127
    assert invoice.total == Money(1000 - 333 + 100 + 127, "USD")
    assert [line.kind for line in invoice.lines].count(LineKind.TAX) == 1


def test_adding_a_line_after_tax_recomputes_it():
    invoice = draft(lines=(fee(1000),))
    invoice.apply_tax(1000)
    invoice.add_line(fee(1000))
    assert invoice.tax == Money(200, "USD")


def test_zero_total_invoice_is_valid_and_settles_at_finalisation():
    invoice = draft(lines=(fee(0),))
    invoice.finalize(number="OLB-000001", at=AT)
    assert invoice.status is InvoiceStatus.PAID
    assert [type(event) for event in invoice.pull_events()] == [InvoiceFinalized, InvoicePaid]


def test_finalising_numbers_the_invoice_and_freezes_its_lines():
    invoice = draft(lines=(fee(1000),))
    invoice.finalize(number=format_invoice_number("OLB-2024", 42), at=AT)
    assert (invoice.status, invoice.number) == (InvoiceStatus.OPEN, "OLB-2024-000042")
    with pytest.raises(InvoiceError):
        invoice.add_line(fee(1))
    [event] = invoice.pull_events()
    assert isinstance(event, InvoiceFinalized) and event.total == Money(1000, "USD") and event.version == 1


def test_credits_beyond_charges_are_carried_forward_not_collected():
    invoice = draft(
        lines=(fee(500), InvoiceLine(kind=LineKind.PRORATION, description="credit", amount=Money(-800, "USD")))
    )
    assert invoice.amount_due == Money(0, "USD")
    assert invoice.credit_to_carry_forward == Money(300, "USD")


def test_invoice_lifecycle_allows_only_its_transitions():
    assert dict(INVOICE_TRANSITIONS) == {
        InvoiceStatus.DRAFT: {InvoiceStatus.OPEN, InvoiceStatus.VOID},  # a draft voided is never numbered
        InvoiceStatus.OPEN: {InvoiceStatus.PAID, InvoiceStatus.VOID, InvoiceStatus.UNCOLLECTIBLE},
        InvoiceStatus.UNCOLLECTIBLE: {InvoiceStatus.PAID, InvoiceStatus.VOID},
        InvoiceStatus.PAID: set(),
        InvoiceStatus.VOID: set(),
    }
    invoice = draft(lines=(fee(1000),))
    with pytest.raises(InvalidTransitionError, match=r"draft.*paid"):
        invoice.mark_paid(at=AT, payment_reference="pi_1")
    invoice.finalize(number="OLB-000001", at=AT)
    invoice.mark_uncollectible(at=AT, reason="dunning exhausted")
    invoice.mark_paid(at=AT, payment_reference="pi_1")
    with pytest.raises(InvalidTransitionError):
        invoice.void(at=AT, reason="too late")


def test_the_invoice_knows_what_was_paid_and_what_is_left_to_collect():
    invoice = draft(lines=(fee(1000),))
    invoice.finalize(number="OLB-000001", at=AT)
    assert (invoice.amount_paid, invoice.amount_remaining) == (Money(0, "USD"), Money(1000, "USD"))
    invoice.mark_paid(at=AT, payment_reference="pi_1")
    assert (invoice.amount_paid, invoice.amount_remaining) == (Money(1000, "USD"), Money(0, "USD"))


def test_lines_in_another_currency_are_refused():
    with pytest.raises(InvoiceError):
        draft(lines=(fee(100, "EUR"),))


def test_invoice_key_is_stable_for_the_same_subscription_and_period():
    assert (
        str(draft().key) == str(draft().key) == "sub_1|period_close|2024-01-01T00:00:00+00:00|2024-02-01T00:00:00+00:00"
    )


def test_tax_rate_must_be_basis_points():
    with pytest.raises(ValueError):
        tax_amount(Money(100, "USD"), 10_001)


LINE_KINDS = st.sampled_from([kind for kind in LineKind if kind is not LineKind.TAX])


@st.composite
def invoice_lines(draw: st.DrawFn, currency: str) -> list[InvoiceLine]:
    lines = []
    for _ in range(draw(st.integers(min_value=0, max_value=15))):
        quantity = draw(st.decimals(min_value=0, max_value=10**6, places=3))
        price = draw(st.decimals(min_value=-1000, max_value=1000, places=7))
        unit_price = UnitPrice(price, currency)
        lines.append(
            InvoiceLine(
                kind=draw(LINE_KINDS),
                description="line",
                amount=line_amount(quantity, unit_price),
                quantity=quantity,
                unit_price=unit_price,
                taxable=draw(st.booleans()),
            )
        )
    return lines


@given(data=st.data(), currency=st.sampled_from(["JPY", "USD", "BHD"]), rate=st.integers(min_value=0, max_value=10_000))
def test_invoice_total_is_the_sum_of_its_rounded_lines_in_every_currency(data, currency, rate):
    invoice = draft(currency, tuple(data.draw(invoice_lines(currency))))
    invoice.apply_tax(rate)
    assert invoice.total.amount_minor == sum(line.amount.amount_minor for line in invoice.lines)
    assert invoice.total == invoice.subtotal - invoice.discount - invoice.credits_applied + invoice.tax
    assert invoice.pre_tax_total == invoice.total - invoice.tax
    exact_tax = Decimal(invoice.taxable_base.amount_minor) * rate / 10_000
    assert abs(Decimal(invoice.tax.amount_minor) - exact_tax) <= Decimal("0.5")

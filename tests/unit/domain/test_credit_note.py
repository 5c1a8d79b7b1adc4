"""Credit notes: limits, the split into reduced / refunded / credited, proportional tax (hand-computed)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.domain.calendar import Period
from shared.domain.credit_note import (
    CreditExceedsInvoice,
    CreditExceedsLine,
    CreditNoteReason,
    EarlierNote,
    InvalidSplit,
    InvoiceNotCreditable,
    RefundExceedsPaid,
    UnknownLine,
    format_credit_note_number,
    issue_credit_note,
)
from shared.domain.errors import InvoiceError
from shared.domain.ids import CustomerId, InvoiceId, SubscriptionId
from shared.domain.invoice import Invoice, InvoiceKey, InvoiceLine, InvoiceReason, InvoiceStatus, LineKind
from shared.domain.money import Money

pytestmark = pytest.mark.unit

JANUARY = Period(datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC))
AT = datetime(2024, 2, 1, tzinfo=UTC)
LATER = datetime(2024, 2, 5, tzinfo=UTC)
REASON = CreditNoteReason.PRODUCT_UNSATISFACTORY


def invoice(*, paid: bool, tax_bps: int = 1000) -> Invoice:
    """fee 30.00 (line 1), usage 12.00 (line 2), included credit -2.00 (line 3), tax 10 % = 4.00 (line 4):
    total 44.00."""
    inv = Invoice.draft(
        invoice_id=InvoiceId("in_1"), key=InvoiceKey(SubscriptionId("sub_1"), InvoiceReason.PERIOD_CLOSE, JANUARY),
        customer_id=CustomerId("cus_1"), currency="USD", at=AT,
        lines=(InvoiceLine(kind=LineKind.FEE, description="Pro", amount=Money(3000, "USD")),
               InvoiceLine(kind=LineKind.USAGE, description="API calls", amount=Money(1200, "USD")),
               InvoiceLine(kind=LineKind.CREDIT, description="Included credit", amount=Money(-200, "USD"))))
    inv.apply_tax(tax_bps)
    inv.finalize(number="OLB-000001", at=AT)
    if paid:
        inv.mark_paid(at=AT, payment_reference="pi_1")
    return inv


def test_a_paid_invoice_is_credited_to_the_balance_by_default_and_refunds_at_most_what_was_paid():
    inv = invoice(paid=True)
    assert inv.total == Money(4400, "USD")
    note = issue_credit_note(credit_note_id="cn_1", invoice=inv, earlier=(), reason=REASON, at=LATER,
                             lines=[(1, 1000)])
    # 10.00 of the fee; tax 4.00 * 10.00 / 40.00 taxable = 1.00
    assert (note.subtotal, note.tax, note.total) == (Money(1000, "USD"), Money(100, "USD"), Money(1100, "USD"))
    assert (note.reduced, note.refunded, note.credited) == (Money(0, "USD"), Money(0, "USD"), Money(1100, "USD"))
    refunded = issue_credit_note(credit_note_id="cn_2", invoice=inv, earlier=(), reason=REASON, at=LATER,
                                 amount_minor=2200, refund_minor=2000)
    assert (refunded.tax, refunded.refunded, refunded.credited) == (Money(200, "USD"), Money(2000, "USD"),
                                                                    Money(200, "USD"))
    with pytest.raises(RefundExceedsPaid):
        issue_credit_note(credit_note_id="cn_3", invoice=inv, reason=REASON, at=LATER, amount_minor=900,
                          refund_minor=901, earlier=[EarlierNote(total_minor=3500, tax_minor=0,
                                                                 refunded_minor=3500)])


def test_an_open_invoice_is_reduced_first_and_the_reduction_settles_it_when_nothing_is_left():
    inv = invoice(paid=False)
    note = issue_credit_note(credit_note_id="cn_1", invoice=inv, earlier=(), reason=REASON, at=LATER,
                             amount_minor=4400)
    assert (note.reduced, note.refunded, note.credited) == (Money(4400, "USD"), Money(0, "USD"), Money(0, "USD"))
    assert note.fully_credits
    with pytest.raises(RefundExceedsPaid):  # nothing was paid in cash
        issue_credit_note(credit_note_id="cn_2", invoice=inv, earlier=(), reason=REASON, at=LATER,
                          amount_minor=100, refund_minor=100)
    inv.credit_before_payment(Money(1400, "USD"), at=LATER)
    assert (inv.status, inv.amount_remaining) == (InvoiceStatus.OPEN, Money(3000, "USD"))
    inv.credit_before_payment(Money(3000, "USD"), at=LATER)
    assert (inv.status, inv.amount_paid, inv.paid_at) == (InvoiceStatus.PAID, Money(0, "USD"), LATER)
    with pytest.raises(InvoiceError):
        inv.credit_before_payment(Money(1, "USD"), at=LATER)


def test_a_payment_after_a_reduction_records_only_the_cash_taken():
    inv = invoice(paid=False)
    inv.credit_before_payment(Money(1400, "USD"), at=LATER)
    inv.mark_paid(at=LATER, payment_reference="pi_1")
    assert inv.amount_paid == Money(3000, "USD")


def test_lines_are_limited_to_what_earlier_notes_left_and_only_charging_lines_can_be_credited():
    inv = invoice(paid=True)
    earlier = [EarlierNote(total_minor=2750, tax_minor=250, refunded_minor=0, lines=[(1, 2500)])]
    with pytest.raises(CreditExceedsLine):
        issue_credit_note(credit_note_id="cn_2", invoice=inv, earlier=earlier, reason=REASON, at=LATER,
                          lines=[(1, 501)])
    ok = issue_credit_note(credit_note_id="cn_2", invoice=inv, earlier=earlier, reason=REASON, at=LATER,
                           lines=[(1, 500)])
    assert ok.total == Money(550, "USD")
    for line_no in (3, 4, 9):  # the included credit (negative), the tax line, no such line
        with pytest.raises(UnknownLine):
            issue_credit_note(credit_note_id="cn_2", invoice=inv, earlier=(), reason=REASON, at=LATER,
                              lines=[(line_no, 100)])


def test_notes_never_sum_past_the_invoice_total():
    inv = invoice(paid=True)
    earlier = [EarlierNote(total_minor=4000, tax_minor=300, refunded_minor=0)]
    with pytest.raises(CreditExceedsInvoice):
        issue_credit_note(credit_note_id="cn_2", invoice=inv, earlier=earlier, reason=REASON, at=LATER,
                          amount_minor=401)
    last = issue_credit_note(credit_note_id="cn_2", invoice=inv, earlier=earlier, reason=REASON, at=LATER,
                             amount_minor=400)
    # 4.00 * 4.00 / 44.00 = 0.36 of tax; the whole remainder is credited, but it is not a void-like note
    assert (last.tax, last.total, last.fully_credits) == (Money(36, "USD"), Money(400, "USD"), False)


def test_the_usage_line_gives_money_back_never_the_included_credits_it_consumed():
    # NOTE: the usage line charged 12.00 of which the included credit covered 2.00: crediting the usage line in
    # full gives 12.00 + tax back (its money), and the credit line is not creditable; nothing restores credits.
    inv = invoice(paid=True)
    note = issue_credit_note(credit_note_id="cn_1", invoice=inv, earlier=(), reason=REASON, at=LATER,
                             lines=[(2, 1200)])
    assert (note.total, note.fully_credits) == (Money(1320, "USD"), False)


def test_draft_and_void_invoices_cannot_be_credited_and_the_split_must_add_up():
    inv = invoice(paid=False)
    inv.void(at=LATER, reason="duplicate")
    with pytest.raises(InvoiceNotCreditable):
        issue_credit_note(credit_note_id="cn_1", invoice=inv, earlier=(), reason=REASON, at=LATER,
                          amount_minor=100)
    paid = invoice(paid=True)
    with pytest.raises(InvalidSplit):
        issue_credit_note(credit_note_id="cn_1", invoice=paid, earlier=(), reason=REASON, at=LATER,
                          amount_minor=1000, refund_minor=600, credit_minor=600)
    with pytest.raises(InvalidSplit):  # a paid invoice owes nothing: 4.00 cannot be a reduction
        issue_credit_note(credit_note_id="cn_1", invoice=paid, earlier=(), reason=REASON, at=LATER,
                          amount_minor=1000, refund_minor=600, credit_minor=0)
    with pytest.raises(InvalidSplit):
        issue_credit_note(credit_note_id="cn_1", invoice=paid, earlier=(), reason=REASON, at=LATER,
                          amount_minor=1000, lines=[(1, 100)])


def test_credit_note_numbers_have_their_own_prefix():
    assert format_credit_note_number(7) == "CN-000007"

"""Credit notes: lowering what a finalised invoice charges, after the fact (Stripe's credit notes).

A credit note is issued against a finalised invoice (open, paid or uncollectible; never a draft, never a
void one), for the whole invoice (an amount, tax included) or per line (line number and a pre-tax amount).
Its total is split three ways, and the split is the rule of this module:

- ``reduced``: while the invoice is still owed (open or uncollectible), the note first lowers what is left
  to pay (``amount_remaining``), like Stripe's pre-payment credit notes;
- ``refunded``: money given back through the payment gateway, never more than was paid in cash on the
  invoice less earlier refunds;
- ``credited``: the rest goes to the customer's balance (``shared.domain.customer_balance``), which the next
  invoices draw from.

Limits: the credit notes of an invoice never sum past its total; a line is never credited past its amount
less what earlier notes took from it. Tax is credited in proportion: per-line notes carry
``invoice tax * credited lines / invoice taxable base``, a whole-invoice amount carries
``amount * invoice tax / invoice total``, each rounded once, and never more than the tax not yet credited.

# NOTE: what a credit note gives back is money, never consumption. A usage line whose included credits were
# consumed charged only what exceeded them, so crediting it returns that money and no credits (the credits
# were never charged for); a coupon's discount is already inside the invoice's total. The one restoration
# is a whole-invoice note that leaves nothing of the invoice (``fully_credits``): it undoes the invoice like
# a void, so a coupon redemption of limited duration counted on it is given back (the caller does that).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from fractions import Fraction

from shared.domain.calendar import ensure_utc
from shared.domain.errors import DomainError
from shared.domain.invoice import Invoice, InvoiceStatus, LineKind
from shared.domain.money import Money

CREDIT_NOTE_PREFIX = "CN"
CREDITABLE_STATUSES = frozenset({InvoiceStatus.OPEN, InvoiceStatus.PAID, InvoiceStatus.UNCOLLECTIBLE})
OWED_STATUSES = frozenset({InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE})


class CreditNoteReason(StrEnum):
    """Stripe's reasons."""

    DUPLICATE = "duplicate"
    FRAUDULENT = "fraudulent"
    ORDER_CHANGE = "order_change"
    PRODUCT_UNSATISFACTORY = "product_unsatisfactory"


class CreditNoteError(DomainError):
    """A credit note the rules refuse; ``code`` says which rule."""

    code = "credit_note"


class InvoiceNotCreditable(CreditNoteError):
    code = "invoice_not_creditable"


class CreditExceedsInvoice(CreditNoteError):
    code = "credit_exceeds_invoice"


class CreditExceedsLine(CreditNoteError):
    code = "credit_exceeds_line"


class RefundExceedsPaid(CreditNoteError):
    code = "refund_exceeds_paid"


class UnknownLine(CreditNoteError):
    code = "unknown_line"


class InvalidSplit(CreditNoteError):
    """Refund plus credit asked for more than the note, or leave a part the invoice does not owe."""

    code = "invalid_split"


@dataclass(frozen=True, slots=True)
class CreditNoteLine:
    """What one note takes from one invoice line (``line_no`` 1-based as stored), or, with ``line_no`` None,
    the pre-tax part of a whole-invoice amount."""

    line_no: int | None
    description: str
    amount: Money


@dataclass(frozen=True, slots=True)
class EarlierNote:
    """What an earlier credit note of the same invoice took: the limits of the next one."""

    total_minor: int
    tax_minor: int
    refunded_minor: int
    lines: Sequence[tuple[int, int]] = ()  # (line_no, amount_minor)


@dataclass(frozen=True, slots=True)
class CreditNote:
    """An issued credit note (numbered by the caller's gapless sequence once stored)."""

    id: str
    invoice_id: str
    subscription_id: str
    customer_id: str
    currency: str
    reason: CreditNoteReason
    memo: str | None
    lines: tuple[CreditNoteLine, ...]
    tax: Money
    reduced: Money
    refunded: Money
    credited: Money
    issued_at: datetime
    fully_credits: bool = False

    @property
    def subtotal(self) -> Money:
        total = Money.zero(self.currency)
        for line in self.lines:
            total = total + line.amount
        return total

    @property
    def total(self) -> Money:
        return self.subtotal + self.tax


def format_credit_note_number(sequence: int) -> str:
    """``CN-000001``: credit notes have their own gapless sequence per issuer."""
    return f"{CREDIT_NOTE_PREFIX}-{sequence:06d}"


def credit_note_issuer(issuer: str) -> str:
    """The key of an issuer's credit-note counter in the invoice counters' table."""
    return f"{issuer}:credit_notes"


def issue_credit_note(
    *,
    credit_note_id: str,
    invoice: Invoice,
    earlier: Sequence[EarlierNote],
    reason: CreditNoteReason,
    at: datetime,
    lines: Sequence[tuple[int, int]] | None = None,
    amount_minor: int | None = None,
    refund_minor: int | None = None,
    credit_minor: int | None = None,
    memo: str | None = None,
) -> CreditNote:
    """Check the rules (module docstring) and split the note; nothing is changed on ``invoice``.

    Exactly one of ``lines`` ((line_no, pre-tax amount) pairs) and ``amount_minor`` (tax included). Without
    ``refund_minor`` and ``credit_minor`` the note reduces what is still owed first and credits the rest to
    the balance (a paid invoice: all to the balance). With ``credit_minor`` given, what is neither refunded
    nor credited is the reduction, which must fit in what is still owed.
    """
    instant = ensure_utc(at)
    currency = invoice.currency
    if invoice.status not in CREDITABLE_STATUSES:
        raise InvoiceNotCreditable(f"invoice {invoice.id} is {invoice.status.value}: only open, paid or "
                                   "uncollectible invoices can be credited")
    if (lines is None) == (amount_minor is None):
        raise InvalidSplit("give either lines or a whole-invoice amount")
    credited_before = sum(n.total_minor for n in earlier)
    tax_before = sum(n.tax_minor for n in earlier)
    tax_left = max(invoice.tax.amount_minor - tax_before, 0)
    note_lines: list[CreditNoteLine] = []
    if lines is not None:
        if not lines:
            raise InvalidSplit("a credit note needs at least one line")
        taken: dict[int, int] = {}
        for note in earlier:
            for line_no, amount in note.lines:
                taken[line_no] = taken.get(line_no, 0) + amount
        seen: set[int] = set()
        for line_no, amount in lines:
            if line_no in seen:
                raise InvalidSplit(f"line {line_no} is named twice")
            seen.add(line_no)
            if not 1 <= line_no <= len(invoice.lines):
                raise UnknownLine(f"invoice {invoice.id} has no line {line_no}")
            line = invoice.lines[line_no - 1]
            if line.kind is LineKind.TAX or not line.amount.is_positive():
                raise UnknownLine(f"line {line_no} ({line.kind.value}) charges nothing that can be credited")
            if amount <= 0:
                raise InvalidSplit(f"line {line_no}: a credited amount must be positive")
            left = line.amount.amount_minor - taken.get(line_no, 0)
            if amount > left:
                raise CreditExceedsLine(f"line {line_no}: {Money(amount, currency)} asked, "
                                        f"{Money(max(left, 0), currency)} left to credit")
            note_lines.append(CreditNoteLine(line_no, line.description, Money(amount, currency)))
        taxable = sum(amount for line_no, amount in lines if invoice.lines[line_no - 1].is_taxable)
        base = invoice.taxable_base.amount_minor
        tax = (invoice.tax.scale(Fraction(taxable, base)).amount_minor if base > 0 and taxable else 0)
    else:
        assert amount_minor is not None
        if amount_minor <= 0:
            raise InvalidSplit("a credit note's amount must be positive")
        total = invoice.total.amount_minor
        tax = invoice.tax.scale(Fraction(amount_minor, total)).amount_minor if total > 0 else 0
        note_lines.append(CreditNoteLine(None, "Credit on the invoice", Money(amount_minor - min(tax, tax_left),
                                                                             currency)))
    tax = min(tax, tax_left)
    note_total = sum(line.amount.amount_minor for line in note_lines) + tax
    left_to_credit = max(invoice.total.amount_minor, 0) - credited_before
    if note_total > left_to_credit:
        raise CreditExceedsInvoice(f"{Money(note_total, currency)} asked, {Money(max(left_to_credit, 0), currency)} "
                                   f"of invoice {invoice.id} left to credit")
    owed = invoice.amount_remaining.amount_minor if invoice.status in OWED_STATUSES else 0
    refundable = invoice.amount_paid_minor - sum(n.refunded_minor for n in earlier)
    refund = refund_minor or 0
    if refund < 0 or (credit_minor is not None and credit_minor < 0):
        raise InvalidSplit("refund and credit must not be negative")
    if refund > refundable:
        raise RefundExceedsPaid(f"refund of {Money(refund, currency)} asked, "
                                f"{Money(max(refundable, 0), currency)} paid and not refunded")
    if refund > note_total:
        raise InvalidSplit("the refund is larger than the credit note")
    if credit_minor is None:
        reduced = min(note_total - refund, owed)
        credit = note_total - refund - reduced
    else:
        credit = credit_minor
        reduced = note_total - refund - credit
        if reduced < 0:
            raise InvalidSplit("refund and credit add up to more than the credit note")
        if reduced > owed:
            raise InvalidSplit(f"{Money(reduced, currency)} would reduce the invoice, which owes "
                               f"{Money(owed, currency)}")
    return CreditNote(
        id=credit_note_id, invoice_id=invoice.id, subscription_id=invoice.subscription_id,
        customer_id=invoice.customer_id, currency=currency, reason=reason, memo=memo, lines=tuple(note_lines),
        tax=Money(tax, currency), reduced=Money(reduced, currency), refunded=Money(refund, currency),
        credited=Money(credit, currency), issued_at=instant,
        fully_credits=lines is None and note_total == left_to_credit and credited_before == 0)

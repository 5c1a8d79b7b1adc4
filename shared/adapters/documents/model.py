"""What an invoice document shows, computed once and rendered by every format (HTML, PDF).

Contract:
- Every amount is formatted from integer minor units by ``Money.format`` (``USD 1,234.50``, ``JPY 1,200``,
  ``KWD 12.345``); no float is ever involved. Unit prices, which may be finer than the minor unit, keep
  every digit they have and at least the currency's minor digits (``USD 20.00``, ``USD 0.0000012``).
- The summary (subtotal, discounts, credits, tax) is the sum of the stored lines by kind, so what the
  customer reads adds up to the total the audit checks against the stored invoice.
- The renderers only lay out these strings: a format cannot show a different number than another.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from shared.domain.invoice import SUBTOTAL_KINDS, LineKind
from shared.domain.money import Money, minor_units

_K = LineKind
CHARGE_KINDS = SUBTOTAL_KINDS  # the invoice's subtotal (shared.domain.invoice): the document adds up the same way
# Line kinds that count units; the others (discount, credit, tax, adjustment) are plain amounts.
METERED_KINDS = frozenset({_K.FEE, _K.USAGE, _K.PRORATION})
# Kinds tagged next to the description so that a reader tells a deduction from a charge.
TAGGED_KINDS = frozenset({_K.DISCOUNT, _K.CREDIT, _K.TAX, _K.ADJUSTMENT})

DEFAULT_ISSUER_NAME = "OpenLedger Billing"


@dataclass(frozen=True, slots=True)
class DocumentLine:
    """One invoice line as printed: description and the formatted quantity, unit price and amount."""

    description: str
    kind: str
    proration: bool
    period: str
    quantity: str
    unit_price: str
    amount: str
    negative: bool

    @property
    def tag(self) -> str:
        """``proration``, the kind of a deduction or tax line, or empty."""
        if self.proration:
            return "proration"
        return self.kind if self.kind in TAGGED_KINDS else ""


@dataclass(frozen=True, slots=True)
class InvoiceDocument:
    """A finalised (or draft) invoice as the customer reads it; every value already formatted."""

    invoice_id: str
    number: str | None
    status: str
    kind: str
    issuer_name: str
    currency: str
    customer_id: str
    customer_name: str
    customer_email: str
    subscription_id: str
    plan_id: str
    period: str
    issued_on: str
    due_on: str
    paid_on: str
    provider_ref: str
    subtotal: str
    discounts: str
    credits: str
    tax: str
    tax_rate: str
    total: str
    amount_paid: str
    amount_due: str
    lines: tuple[DocumentLine, ...]
    document_title: str = "Invoice"  # "Credit note" for a credit note rendered by the same templates
    # The span of the lines' own service periods when it differs from the billing period (a period close
    # bills the closed period's usage and the next period's fee in advance): empty otherwise.
    covers: str = ""

    @property
    def is_final(self) -> bool:
        """A draft has no number yet and may still change: it is not a document to hand out."""
        return self.number is not None and self.status != "draft"

    @property
    def title(self) -> str:
        return self.number or "draft"

    @property
    def status_text(self) -> str:
        """``Paid on 12 Mar 2026``, ``Open, due 24 Mar 2026``, ``Uncollectible``, ``Void``, ``Draft``."""
        if self.status == "paid":
            return f"Paid on {self.paid_on}" if self.paid_on else "Paid"
        if self.status == "open":
            return f"Open, due {self.due_on}" if self.due_on else "Open"
        return self.status.capitalize()

    @property
    def paid_note(self) -> str:
        """``Paid on 12 Mar 2026 (payment pi_...).`` for a paid invoice, else empty (the footer's first words)."""
        if not self.paid_on:
            return ""
        return f"Paid on {self.paid_on}" + (f" (payment {self.provider_ref})" if self.provider_ref else "") + "."

    @property
    def file_stem(self) -> str:
        """A file name without extension: the number (or id) with anything but letters, digits, ``.``,
        ``_`` and ``-`` replaced, safe in a path and in a ``Content-Disposition`` header."""
        return "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "-"
                       for c in (self.number or self.invoice_id)).lstrip(".") or "invoice"


def format_money(amount_minor: int | None, currency: str) -> str:
    return Money(int(amount_minor or 0), currency).format()


def format_day(value: datetime | None) -> str:
    return value.strftime("%d %b %Y") if value is not None else ""


def format_period(start: datetime | None, end: datetime | None) -> str:
    return f"{format_day(start)} – {format_day(end)}" if start is not None and end is not None else ""


def service_span(lines: Sequence[Mapping[str, Any]]) -> tuple[datetime, datetime] | None:
    """The span of the lines' own service periods (earliest start, latest end), None when no line has one."""
    periods = [(line["period_start"], line["period_end"]) for line in lines
               if line.get("period_start") is not None and line.get("period_end") is not None]
    if not periods:
        return None
    return min(start for start, _ in periods), max(end for _, end in periods)


def _covers(invoice: Mapping[str, Any], lines: Sequence[Mapping[str, Any]]) -> str:
    span = service_span(lines)
    if span is None or span == (invoice["period_start"], invoice["period_end"]):
        return ""
    return format_period(*span)


def format_quantity(quantity: Decimal | None) -> str:
    """``1,500`` for whole quantities, ``2.5`` otherwise (trailing zeros dropped), empty when absent."""
    if quantity is None:
        return ""
    normalized = quantity.normalize()
    return f"{int(normalized):,}" if normalized == normalized.to_integral() else f"{normalized:,f}"


def format_unit_price(unit_price: Decimal, currency: str) -> str:
    """A per-unit price with its exact digits, never fewer than the currency's minor unit has."""
    exponent = unit_price.normalize().as_tuple().exponent
    digits = max(minor_units(currency), -exponent if isinstance(exponent, int) else 0)
    magnitude = f"{abs(unit_price):,.{digits}f}"
    return f"{'-' if unit_price < 0 else ''}{currency} {magnitude}"


def format_rate_bps(rate_bps: int) -> str:
    """Basis points as a percentage with two decimals: 2000 -> ``20.00%``."""
    return f"{Decimal(rate_bps) / 100:.2f}%"


def document_line(line: Mapping[str, Any], currency: str) -> DocumentLine:
    unit = line.get("unit_price")
    kind = str(line["kind"])
    return DocumentLine(
        description=str(line["description"]), kind=kind, proration=bool(line.get("proration")),
        period=format_period(line.get("period_start"), line.get("period_end")),
        quantity=format_quantity(line.get("quantity")) if kind in METERED_KINDS else "",
        unit_price=format_unit_price(Decimal(unit), currency) if unit is not None else "",
        amount=format_money(line["amount_minor"], currency),
        negative=int(line["amount_minor"]) < 0,
    )


def invoice_document(invoice: Mapping[str, Any], lines: Sequence[Mapping[str, Any]], *,
                     customer_name: str | None = None, customer_email: str | None = None,
                     issuer_name: str = DEFAULT_ISSUER_NAME) -> InvoiceDocument:
    """The document of one stored invoice (a row of ``invoices``) and its lines (rows of ``invoice_lines``,
    in line order)."""
    currency = str(invoice["currency"])
    by_kind: dict[str, int] = {}
    for line in lines:
        by_kind[line["kind"]] = by_kind.get(line["kind"], 0) + int(line["amount_minor"])
    status = str(invoice["status"])
    total = int(invoice["total_minor"])
    paid = int(invoice["amount_paid_minor"] or 0)
    # NOTE: only an open invoice is owed; the amount due never goes below zero (a negative total is a
    # credit carried to the next invoice, not money owed to the customer on this document).
    due_minor = invoice.get("amount_due_minor")
    reduced = int(invoice.get("pre_payment_credit_minor") or 0)  # credit notes issued while it was owed
    owed = max(int(due_minor if due_minor is not None else max(total, 0)) - paid - reduced, 0) \
        if status == "open" else 0
    return InvoiceDocument(
        invoice_id=str(invoice["invoice_id"]), number=invoice.get("number"), status=status,
        kind=str(invoice["kind"]), issuer_name=issuer_name, currency=currency,
        customer_id=str(invoice["customer_id"]), customer_name=customer_name or "",
        customer_email=customer_email or "", subscription_id=str(invoice["subscription_id"]),
        plan_id=str(invoice.get("plan_id") or ""),
        period=format_period(invoice["period_start"], invoice["period_end"]),
        issued_on=format_day(invoice.get("issued_at")), due_on=format_day(invoice.get("due_at")),
        paid_on=format_day(invoice.get("paid_at")) if status == "paid" else "",
        provider_ref=str(invoice.get("provider_ref") or "") if status == "paid" else "",
        subtotal=format_money(sum(v for k, v in by_kind.items() if k in CHARGE_KINDS), currency),
        discounts=format_money(by_kind.get("discount", 0), currency),
        credits=format_money(by_kind.get("credit", 0), currency),
        tax=format_money(by_kind.get("tax", 0), currency),
        tax_rate=format_rate_bps(int(invoice.get("tax_rate_bps") or 0)),
        total=format_money(total, currency), amount_paid=format_money(paid, currency),
        amount_due=format_money(owed, currency),
        lines=tuple(document_line(line, currency) for line in lines),
        covers=_covers(invoice, lines),
    )

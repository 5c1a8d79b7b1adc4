"""A credit note as a document: the invoice templates' fields, filled from a `credit_notes` row and its lines.

The lines are printed negative (money given back); the totals say how the note was settled: what it took off
what the invoice still owed, what was refunded, what went to the customer's balance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from shared.adapters.documents.model import (
    DEFAULT_ISSUER_NAME,
    DocumentLine,
    InvoiceDocument,
    format_day,
    format_money,
)


def credit_note_document(note: Mapping[str, Any], lines: Sequence[Mapping[str, Any]], *,
                         issuer_name: str = DEFAULT_ISSUER_NAME) -> InvoiceDocument:
    """`note`: a `credit_notes` row with `invoice_number`, `customer_name`, `customer_email`; `lines`: its
    `credit_note_lines` rows in order."""
    currency = str(note["currency"])
    issued = format_day(note["issued_at"])
    parts = [f"{label} {format_money(int(note[column]), currency)}" for label, column in (
        ("reduced the amount owed by", "reduced_minor"), ("refunded", "refunded_minor"),
        ("credited to the balance", "credited_minor")) if int(note[column])]
    return InvoiceDocument(
        invoice_id=str(note["credit_note_id"]), number=str(note["number"]), status="issued",
        kind=f"credit note ({note['reason']}) for invoice {note['invoice_number']}", issuer_name=issuer_name,
        currency=currency, customer_id=str(note["customer_id"]), customer_name=str(note.get("customer_name") or ""),
        customer_email=str(note.get("customer_email") or ""), subscription_id=str(note["subscription_id"]),
        plan_id=str(note.get("memo") or ""), period=f"invoice {note['invoice_number']}", issued_on=issued,
        due_on="", paid_on="", provider_ref=str(note.get("refund_ref") or ""),
        subtotal=format_money(-int(note["subtotal_minor"]), currency), discounts=format_money(0, currency),
        credits=format_money(0, currency), tax=format_money(-int(note["tax_minor"]), currency),
        tax_rate="proportional", total=format_money(-int(note["total_minor"]), currency),
        amount_paid="; ".join(parts) or "-", amount_due=format_money(0, currency),
        lines=tuple(DocumentLine(
            description=str(line["description"]) + (f" (invoice line {line['invoice_line_no']})"
                                                    if line.get("invoice_line_no") else ""),
            kind="credit", proration=False, period="", quantity="", unit_price="",
            amount=format_money(-int(line["amount_minor"]), currency), negative=True) for line in lines),
        document_title="Credit note")

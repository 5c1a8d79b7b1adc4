"""Credit notes and refunds in PostgreSQL: the one writer of `credit_notes`, `credit_note_lines` and `refunds`.

A credit note is stored in the worker's batch transaction: its number comes from the issuer's credit-note
counter row (`invoice_number_sequences`, issuer key "<issuer>:credit_notes", prefix CN), so a rolled-back
batch frees it and numbers stay gapless. A refunded part writes its `refunds` row in the same transaction,
before any provider call; the refund executor (entrypoints/refunds.py) claims pending rows with
`FOR UPDATE SKIP LOCKED`, calls the gateway with the row's idempotency key (derived from the credit note) and
records the outcome here, on the refund and on its credit note.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from services.billing_worker.adapters.billing_repository import allocate_invoice_numbers
from shared.adapters.postgres.schema.billing import credit_note_lines, credit_notes, invoice_lines, invoices, refunds
from shared.domain.credit_note import CREDIT_NOTE_PREFIX, CreditNote, EarlierNote, credit_note_issuer
from shared.domain.ids import derived_id
from shared.domain.invoice import Invoice, InvoiceStatus
from shared.domain.money import Money


def refund_id_for(credit_note_id: str) -> str:
    return derived_id("rf", credit_note_id)


def refund_key_for(credit_note_id: str) -> str:
    """The provider idempotency key of a credit note's refund: one refund per note, whoever sends it."""
    return f"refund:{credit_note_id}"


def earlier_credit_notes(conn: sa.Connection, invoice_id: str) -> list[EarlierNote]:
    n, ln = credit_notes.c, credit_note_lines.c
    notes = conn.execute(sa.select(n.credit_note_id, n.total_minor, n.tax_minor, n.refunded_minor)
                         .where(n.invoice_id == invoice_id).order_by(n.number_seq)).all()
    if not notes:
        return []
    lines: dict[str, list[tuple[int, int]]] = {}
    for row in conn.execute(sa.select(ln.credit_note_id, ln.invoice_line_no, ln.amount_minor).where(
            ln.credit_note_id.in_([x.credit_note_id for x in notes]), ln.invoice_line_no.is_not(None))):
        lines.setdefault(row.credit_note_id, []).append((int(row.invoice_line_no), int(row.amount_minor)))
    return [EarlierNote(total_minor=x.total_minor, tax_minor=x.tax_minor, refunded_minor=x.refunded_minor,
                        lines=tuple(lines.get(x.credit_note_id, ()))) for x in notes]


def store_credit_note(conn: sa.Connection, note: CreditNote, *, issuer: str, payment_ref: str | None) -> str:
    (number,) = allocate_invoice_numbers(conn, 1, issuer=credit_note_issuer(issuer), prefix=CREDIT_NOTE_PREFIX)
    refunding = note.refunded.is_positive()
    conn.execute(sa.insert(credit_notes).values(
        credit_note_id=note.id, invoice_id=note.invoice_id, subscription_id=note.subscription_id,
        customer_id=note.customer_id, issuer=issuer, number=number, number_seq=int(number.rsplit("-", 1)[1]),
        currency=note.currency, reason=note.reason.value, memo=note.memo,
        subtotal_minor=note.subtotal.amount_minor, tax_minor=note.tax.amount_minor,
        total_minor=note.total.amount_minor, reduced_minor=note.reduced.amount_minor,
        refunded_minor=note.refunded.amount_minor, credited_minor=note.credited.amount_minor,
        refund_status="pending" if refunding else None, issued_at=note.issued_at))
    conn.execute(sa.insert(credit_note_lines), [
        {"credit_note_id": note.id, "line_no": i, "invoice_line_no": line.line_no,
         "description": line.description, "amount_minor": line.amount.amount_minor, "currency": note.currency}
        for i, line in enumerate(note.lines, start=1)])
    if refunding:
        conn.execute(sa.insert(refunds).values(
            refund_id=refund_id_for(note.id), credit_note_id=note.id, invoice_id=note.invoice_id,
            subscription_id=note.subscription_id, customer_id=note.customer_id,
            amount_minor=note.refunded.amount_minor, currency=note.currency, payment_ref=payment_ref,
            idempotency_key=refund_key_for(note.id), status="pending", requested_at=note.issued_at))
    return number


def fee_line_of(conn: sa.Connection, subscription_id: str, period_start: datetime,
                period_end: datetime) -> tuple[str, int] | None:
    i, ln = invoices.c, invoice_lines.c
    row = conn.execute(sa.select(ln.invoice_id, ln.line_no).select_from(
        invoice_lines.join(invoices, i.invoice_id == ln.invoice_id)).where(
        i.subscription_id == subscription_id, i.status.in_(("open", "paid", "uncollectible")), ln.kind == "fee",
        ln.period_start == period_start, ln.period_end == period_end,
    ).order_by(i.issued_at.desc(), ln.line_no.desc()).limit(1)).one_or_none()
    return (str(row.invoice_id), int(row.line_no)) if row is not None else None


def save_invoice_credit(conn: sa.Connection, invoice: Invoice, at: datetime) -> None:
    values: dict[str, Any] = {"pre_payment_credit_minor": invoice.pre_payment_credit_minor,
                              "status": invoice.status.value, "updated_at": sa.func.now()}
    if invoice.status is InvoiceStatus.PAID:
        values["paid_at"] = invoice.paid_at or at
    conn.execute(sa.update(invoices).where(invoices.c.invoice_id == invoice.id).values(values))


# ------------------------------------------------------------------------------------------- refunds


@dataclass(frozen=True)
class ClaimedRefund:
    refund_id: str
    credit_note_id: str
    invoice_id: str
    subscription_id: str
    customer_id: str
    amount: Money
    payment_ref: str | None
    idempotency_key: str
    dispatch_count: int


def claim_refunds(conn: sa.Connection, *, limit: int, lease_s: float, now: datetime) -> list[ClaimedRefund]:
    """Due refunds (pending, or in flight / unknown whose lease expired), marked in flight with a lease."""
    r = refunds.c
    due = sa.select(r.refund_id).where(
        sa.or_(r.status == "pending",
               sa.and_(r.status.in_(("in_flight", "unknown")), r.lease_until <= now))
    ).order_by(r.requested_at).limit(limit).with_for_update(skip_locked=True)
    rows = conn.execute(sa.update(refunds).where(r.refund_id.in_(due.scalar_subquery())).values(
        status="in_flight", lease_until=now + timedelta(seconds=lease_s), dispatch_count=r.dispatch_count + 1,
    ).returning(r.refund_id, r.credit_note_id, r.invoice_id, r.subscription_id, r.customer_id, r.amount_minor,
                r.currency, r.payment_ref, r.idempotency_key, r.dispatch_count)).all()
    return [ClaimedRefund(x.refund_id, x.credit_note_id, x.invoice_id, x.subscription_id, x.customer_id,
                          Money(x.amount_minor, x.currency), x.payment_ref, x.idempotency_key, x.dispatch_count)
            for x in rows]


def record_refund(conn: sa.Connection, refund_id: str, *, status: str, provider_ref: str | None,
                  message: str | None, now: datetime, retry_after_s: float = 0.0) -> None:
    """The outcome of one call: succeeded / failed are final (also on the credit note); unknown is sent again
    (same key) after `retry_after_s`."""
    r = refunds.c
    values: dict[str, Any] = {"status": status, "error_message": (message or "")[:500] or None}
    if provider_ref:
        values["provider_ref"] = provider_ref
    if status in ("succeeded", "failed"):
        values["completed_at"] = now
        values["lease_until"] = None
    else:
        values["lease_until"] = now + timedelta(seconds=retry_after_s)
    row = conn.execute(sa.update(refunds).where(r.refund_id == refund_id, r.status == "in_flight")
                       .values(values).returning(r.credit_note_id)).one_or_none()
    if row is not None:
        conn.execute(sa.update(credit_notes).where(credit_notes.c.credit_note_id == row.credit_note_id).values(
            refund_status=status, refund_ref=provider_ref))

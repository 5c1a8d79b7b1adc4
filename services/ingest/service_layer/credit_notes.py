"""Credit notes at the edge: issuing one (`POST /v1/invoices/{id}/credit-notes`) and reading them.

The worker is the only writer of invoices and credit notes: the edge looks the invoice up in the read model,
refuses what it can know (an unknown invoice: 404; a draft or a void one: `invoice_not_creditable`), and sends
`credit_note.issue` keyed by the invoice's subscription like any lifecycle command (outbox + audit in one
transaction, `lifecycle.send_command`); the rules (limits, tax, the split) are the domain's, applied by the
worker, whose refusals come back as the command's outcome. Reads query the worker's tables directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from services.ingest.auth import Principal
from services.ingest.service_layer import lifecycle
from services.ingest.service_layer.invoices import current as current_invoice
from services.ingest.service_layer.lifecycle import Accepted
from services.ingest.service_layer.refusals import InvoiceNotCreditable, UnknownCreditNote
from services.ingest.service_layer.unit_of_work import UnitOfWorkFactory
from services.ingest.views import CreditNoteLineView, CreditNoteView
from shared.adapters.documents import InvoiceDocument
from shared.adapters.documents.credit_note import credit_note_document
from shared.adapters.postgres.schema.billing import credit_note_lines, credit_notes, invoices
from shared.adapters.postgres.schema.core import customers
from shared.contracts.messages import CreditNoteLineRequest, IssueCreditNote


def issue(uow: UnitOfWorkFactory, engine: sa.Engine, invoice_id: str, *, lines: Sequence[tuple[int, int]] | None,
          amount_minor: int | None, reason: str, memo: str | None, refund_minor: int | None,
          credit_minor: int | None, principal: Principal, authorize: Callable[[str], None], now: datetime,
          request_id: str | None) -> Accepted:
    """Send `credit_note.issue` for a finalised invoice (see the module docstring)."""
    found = current_invoice(engine, invoice_id, authorize)
    if found.status in ("draft", "void"):
        raise InvoiceNotCreditable(f"invoice {invoice_id} is {found.status}: only open, paid or uncollectible "
                                   "invoices can be credited", field="invoice_id")

    def build(customer_id: str) -> IssueCreditNote:
        return IssueCreditNote(
            subscription_id=found.subscription_id, customer_id=customer_id, invoice_id=invoice_id,
            lines=[CreditNoteLineRequest(line_no=n, amount_minor=a) for n, a in lines] if lines is not None else None,
            amount_minor=amount_minor, reason=reason, memo=memo,
            refund_minor=refund_minor, credit_minor=credit_minor)

    return lifecycle.send_command(uow, found.subscription_id, build, "credit_note.issue", principal=principal,
                                  authorize=authorize, now=now, request_id=request_id, invoice_id=invoice_id)


# ------------------------------------------------------------------------------------------------ reads


def _views(conn: sa.Connection, rows: Sequence[Any]) -> list[CreditNoteView]:
    ids = [r.credit_note_id for r in rows]
    lines: dict[str, list[CreditNoteLineView]] = {i: [] for i in ids}
    if ids:
        for line in conn.execute(sa.select(credit_note_lines).where(credit_note_lines.c.credit_note_id.in_(ids))
                                 .order_by(credit_note_lines.c.credit_note_id, credit_note_lines.c.line_no)):
            lines[line.credit_note_id].append(CreditNoteLineView.model_validate(line._mapping))
    return [CreditNoteView.model_validate({**r._mapping, "lines": lines[r.credit_note_id]}) for r in rows]


def credit_note(engine: sa.Engine, credit_note_id: str) -> CreditNoteView | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(credit_notes).where(credit_notes.c.credit_note_id == credit_note_id)
                           ).one_or_none()
        return _views(conn, [row])[0] if row is not None else None


def credit_notes_of_invoice(engine: sa.Engine, invoice_id: str) -> list[CreditNoteView]:
    """Every credit note of one invoice, in number order (an invoice has few: they cannot exceed its total)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(credit_notes).where(credit_notes.c.invoice_id == invoice_id)
                            .order_by(credit_notes.c.number_seq)).all()
        return _views(conn, rows)


def credit_notes_of_customer(engine: sa.Engine, customer_id: str, after: str | None,
                             limit: int) -> tuple[list[CreditNoteView], str | None]:
    """A page of the customer's credit notes by id (keyset), and the id to continue after when more follow."""
    query = sa.select(credit_notes).where(credit_notes.c.customer_id == customer_id)
    if after is not None:
        query = query.where(credit_notes.c.credit_note_id > after)
    with engine.connect() as conn:
        rows = conn.execute(query.order_by(credit_notes.c.credit_note_id).limit(limit + 1)).all()
        more = len(rows) > limit
        rows = rows[:limit]
        return _views(conn, rows), rows[-1].credit_note_id if more and rows else None


def document(engine: sa.Engine, credit_note_id: str, *, issuer_name: str) -> InvoiceDocument:
    """The credit note as a document (the invoice renderer's fields); refused when there is no such note."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(credit_notes, invoices.c.number.label("invoice_number"),
                      customers.c.name.label("customer_name"), customers.c.email.label("customer_email"))
            .select_from(credit_notes.join(invoices, invoices.c.invoice_id == credit_notes.c.invoice_id)
                         .outerjoin(customers, customers.c.customer_id == credit_notes.c.customer_id))
            .where(credit_notes.c.credit_note_id == credit_note_id)).mappings().one_or_none()
        if row is None:
            raise UnknownCreditNote(f"no credit note {credit_note_id!r}", field="credit_note_id")
        lines = conn.execute(sa.select(credit_note_lines).where(credit_note_lines.c.credit_note_id == credit_note_id)
                             .order_by(credit_note_lines.c.line_no)).mappings().all()
    return credit_note_document(dict(row), [dict(line) for line in lines], issuer_name=issuer_name)

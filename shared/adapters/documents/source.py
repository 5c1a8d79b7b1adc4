"""Invoice documents read from PostgreSQL: the invoice row, its lines in order, and who it is billed to."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from shared.adapters.documents.model import DEFAULT_ISSUER_NAME, InvoiceDocument, invoice_document
from shared.adapters.postgres.match import one_of
from shared.adapters.postgres.schema.billing import invoice_lines, invoices
from shared.adapters.postgres.schema.core import customers

_WITH_CUSTOMER = (sa.select(invoices, customers.c.name.label("customer_name"),
                            customers.c.email.label("customer_email"))
                  .select_from(invoices.outerjoin(customers, customers.c.customer_id == invoices.c.customer_id)))


def _lines_of(conn: sa.Connection, invoice_ids: Sequence[str]) -> dict[str, list[Mapping[str, Any]]]:
    found: dict[str, list[Mapping[str, Any]]] = {i: [] for i in invoice_ids}
    if invoice_ids:
        # One array parameter (= ANY) rather than one parameter per id: the demo renders thousands at once.
        for line in conn.execute(sa.select(invoice_lines).where(one_of(invoice_lines.c.invoice_id, invoice_ids))
                                 .order_by(invoice_lines.c.invoice_id, invoice_lines.c.line_no)).mappings():
            found[line["invoice_id"]].append(dict(line))
    return found


def _documents(conn: sa.Connection, rows: Sequence[Mapping[str, Any]], issuer_name: str) -> list[InvoiceDocument]:
    lines = _lines_of(conn, [r["invoice_id"] for r in rows])
    return [invoice_document(r, lines[r["invoice_id"]], customer_name=r["customer_name"],
                             customer_email=r["customer_email"], issuer_name=issuer_name) for r in rows]


def load_invoice_document(conn: sa.Connection, invoice_id: str, *,
                          issuer_name: str = DEFAULT_ISSUER_NAME) -> InvoiceDocument | None:
    """The document of one invoice (draft or final), or None when there is no such invoice."""
    row = conn.execute(_WITH_CUSTOMER.where(invoices.c.invoice_id == invoice_id)).mappings().one_or_none()
    return None if row is None else _documents(conn, [dict(row)], issuer_name)[0]


def load_final_invoice_documents(conn: sa.Connection, *, limit: int | None = None,
                                 issuer_name: str = DEFAULT_ISSUER_NAME) -> list[InvoiceDocument]:
    """Every finalised invoice (not draft) in number order, at most `limit` of them."""
    query = (_WITH_CUSTOMER.where(invoices.c.status != "draft")
             .order_by(invoices.c.number_seq.asc().nulls_last(), invoices.c.invoice_id))
    if limit:
        query = query.limit(limit)
    return _documents(conn, [dict(row) for row in conn.execute(query).mappings()], issuer_name)

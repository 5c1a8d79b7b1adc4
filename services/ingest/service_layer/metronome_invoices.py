"""Reads behind Metronome's invoice calls: a customer's invoices with their lines (the read model, through
`views`), one invoice of a customer, and the Metronome contract each invoiced subscription belongs to."""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa

from services.ingest.service_layer import views
from services.ingest.service_layer.refusals import MetronomeRefusal
from services.ingest.views import InvoiceView
from shared.adapters.postgres.schema.contract_pricing import mx_contracts

_READ_PAGE = 500


def invoices_of(engine: sa.Engine, customer_id: str) -> list[InvoiceView]:
    """Every invoice of the customer, with its lines."""
    found: list[InvoiceView] = []
    after: str | None = None
    while True:
        page, after = views.invoices_of(engine, customer_id, after, _READ_PAGE)
        found.extend(page)
        if after is None:
            return found


def invoice_of(engine: sa.Engine, customer_id: str, invoice_id: str) -> InvoiceView:
    """One invoice of the customer (another customer's invoice is unknown here, like a missing one)."""
    found = views.invoice(engine, invoice_id)
    if found is None or found.customer_id != customer_id:
        raise MetronomeRefusal(f"no invoice {invoice_id!r} of customer {customer_id!r}", code="not_found",
                               fields=[("invoice_id", "unknown invoice")])
    return found


def contract_ids(engine: sa.Engine, subscription_ids: Iterable[str]) -> dict[str, str]:
    """subscription id -> the Metronome contract made of it (subscriptions made natively have none)."""
    ids = sorted(set(subscription_ids))
    if not ids:
        return {}
    with engine.connect() as conn:
        rows = conn.execute(sa.select(mx_contracts.c.subscription_id, mx_contracts.c.contract_id)
                            .where(mx_contracts.c.subscription_id.in_(ids))).all()
    return {r.subscription_id: r.contract_id for r in rows}

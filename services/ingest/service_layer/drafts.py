"""Finalising a draft invoice now (`POST /v1/invoices/{id}/finalize`): the edge's half.

A period-close invoice with a grace stays DRAFT until the grace ends (the scheduler then has the worker
finalise it); an operator may finalise it at once. The worker is the only writer of invoices: the edge looks
the invoice up in the read model, refuses what it can know (an unknown invoice, a void one), and sends
`invoice.finalize` keyed by the invoice's subscription like any lifecycle command (outbox + audit in one
transaction, `lifecycle.send_command`). An invoice that is already final needs no command: it is answered as
it is (finalising is idempotent).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import sqlalchemy as sa

from services.ingest.auth import Principal
from services.ingest.service_layer import invoices, lifecycle
from services.ingest.service_layer.lifecycle import Accepted
from services.ingest.service_layer.refusals import InvoiceNotDraft
from services.ingest.service_layer.unit_of_work import UnitOfWorkFactory
from services.ingest.views import InvoiceView
from shared.contracts.messages import FinalizeInvoice


def finalize_invoice(uow: UnitOfWorkFactory, engine: sa.Engine, invoice_id: str, *, principal: Principal,
                     authorize: Callable[[str], None], now: datetime, request_id: str | None) -> Accepted | None:
    """Send `invoice.finalize` for a draft; None when the invoice is final already (nothing to send).
    Refuses an unknown invoice (`UnknownInvoice`) and a void one (`InvoiceNotDraft`)."""
    found = current(engine, invoice_id, authorize)
    if found.status != "draft":
        return None

    def build(customer_id: str) -> FinalizeInvoice:
        return FinalizeInvoice(subscription_id=found.subscription_id, customer_id=customer_id, invoice_id=invoice_id)

    return lifecycle.send_command(uow, found.subscription_id, build, "invoice.finalize", principal=principal,
                                  authorize=authorize, now=now, request_id=request_id, invoice_id=invoice_id)


def current(engine: sa.Engine, invoice_id: str, authorize: Callable[[str], None]) -> InvoiceView:
    """The invoice as the read model has it, the caller authorised for its customer; a void one is refused."""
    found = invoices.current(engine, invoice_id, authorize)
    if found.status == "void":
        raise InvoiceNotDraft(f"invoice {invoice_id} is void: it cannot be finalised", field="invoice_id")
    return found

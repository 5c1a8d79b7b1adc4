"""Metronome's invoice calls: a customer's invoices (list, retrieve) in Metronome's shape
(`services.ingest.metronome.invoices`) and `invoices.void` through our void use case (the worker voids the
invoice; the answer waits for its outcome)."""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from services.ingest.auth import Principal, Scope, authorize_customer, require
from services.ingest.container import Container, get_container
from services.ingest.ids import PathId
from services.ingest.metronome import invoices as shapes
from services.ingest.metronome.customers import not_supported
from services.ingest.metronome.pages import after_of, limit_of
from services.ingest.pagination import encode_cursor
from services.ingest.problems import PROBLEM_RESPONSES
from services.ingest.routes.subscriptions import worker_outcome
from services.ingest.service_layer import invoices as invoice_use_cases
from services.ingest.service_layer import metronome_customers, metronome_invoices
from services.ingest.service_layer.unit_of_work import UnitOfWorkFactory, sql_unit_of_work
from services.ingest.views import InvoiceView

router = APIRouter(tags=["metronome"])


class VoidBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=200)


def unit_of_work(container: Container = Depends(get_container)) -> UnitOfWorkFactory:
    return sql_unit_of_work(container.engine)


def _shown(invoice: InvoiceView, contracts: dict[str, str], skip_zero_qty: bool) -> dict[str, Any]:
    if skip_zero_qty:
        invoice = invoice.model_copy(update={"lines": [li for li in invoice.lines if li.quantity != 0]})
    return shapes.invoice_json(invoice, contracts)


@router.get("/v1/customers/{customer_id}/invoices", responses=PROBLEM_RESPONSES,
            summary="Metronome: a customer's invoices, with line items")
async def list_invoices(customer_id: PathId, contract_id: str | None = None, credit_type_id: str | None = None,
                        starting_on: datetime | None = None, ending_before: datetime | None = None,
                        status: str | None = None,
                        invoice_type: Literal["USAGE", "USAGE_CONSOLIDATED", "SCHEDULED"] | None = Query(None,
                                                                                                         alias="type"),
                        sort: Literal["date_asc", "date_desc"] = "date_asc", skip_zero_qty_line_items: bool = False,
                        include_historical_commit_invoices: bool = False, webhook_notification_id: str | None = None,
                        limit: int | None = None, next_page: str | None = None,
                        principal: Principal = Depends(require(Scope.READ)),
                        container: Container = Depends(get_container),
                        uow: UnitOfWorkFactory = Depends(unit_of_work)) -> dict[str, Any]:
    authorize_customer(principal, customer_id)
    if webhook_notification_id is not None:
        raise not_supported("webhook_notification_id", "invoices by webhook notification")
    if invoice_type == "USAGE_CONSOLIDATED":
        raise not_supported("type", "consolidated invoices (account hierarchies)")
    size, after = limit_of(limit), after_of(next_page)
    await run_in_threadpool(metronome_customers.customer, uow, customer_id)
    found = await run_in_threadpool(metronome_invoices.invoices_of, container.engine, customer_id)
    contracts = await run_in_threadpool(metronome_invoices.contract_ids, container.engine,
                                        [i.subscription_id for i in found])
    kept = [i for i in found
            if (status is None or shapes.STATUSES[i.status] == status.upper())
            and (invoice_type is None or shapes.invoice_type(i) == invoice_type)
            and (credit_type_id is None or i.currency == shapes.currency_of_credit_type(credit_type_id))
            and (contract_id is None or contracts.get(i.subscription_id) == contract_id)
            and (starting_on is None or i.period_start >= starting_on)
            and (ending_before is None or i.period_end <= ending_before)]
    kept.sort(key=lambda i: (i.period_start, i.invoice_id), reverse=sort == "date_desc")
    if after is not None:
        ids = [i.invoice_id for i in kept]
        kept = kept[ids.index(after) + 1:] if after in ids else []
    shown = kept[:size]
    return {"data": [_shown(i, contracts, skip_zero_qty_line_items) for i in shown],
            "next_page": encode_cursor(shown[-1].invoice_id) if len(kept) > size else None}


@router.get("/v1/customers/{customer_id}/invoices/{invoice_id}", responses=PROBLEM_RESPONSES,
            summary="Metronome: one invoice of a customer, with line items")
async def retrieve_invoice(customer_id: PathId, invoice_id: PathId, skip_zero_qty_line_items: bool = False,
                           principal: Principal = Depends(require(Scope.READ)),
                           container: Container = Depends(get_container)) -> dict[str, Any]:
    authorize_customer(principal, customer_id)
    found = await run_in_threadpool(metronome_invoices.invoice_of, container.engine, customer_id, invoice_id)
    contracts = await run_in_threadpool(metronome_invoices.contract_ids, container.engine, [found.subscription_id])
    return {"data": _shown(found, contracts, skip_zero_qty_line_items)}


@router.post("/v1/invoices/void", responses=PROBLEM_RESPONSES,
             summary="Metronome: void an invoice (draft, open or uncollectible)")
async def void_invoice(body: VoidBody, request: Request, principal: Principal = Depends(require(Scope.ADMIN)),
                       container: Container = Depends(get_container),
                       uow: UnitOfWorkFactory = Depends(unit_of_work)) -> JSONResponse:
    now = await run_in_threadpool(container.clock.now)
    accepted = await run_in_threadpool(partial(
        invoice_use_cases.void_invoice, uow, container.engine, body.id, None, principal=principal,
        authorize=partial(authorize_customer, principal), now=now, request_id=request.headers.get("x-request-id")))
    outcome = await worker_outcome(container, uow, accepted)
    if outcome is None:  # the worker has not answered within the wait: it will void the invoice
        return JSONResponse({"data": None, "command_id": str(accepted.command_id)}, status_code=202)
    return JSONResponse({"data": {"id": body.id}})

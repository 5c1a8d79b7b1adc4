"""Draft invoices: `POST /v1/invoices/{invoice_id}/finalize` finalises a draft now instead of at the end of its
grace (admin keys). The use case is `services.ingest.service_layer.drafts`; like lifecycle commands, the
answer is the worker's: 200 with the invoice (numbered), 409 for a void invoice, or 202 with a poll URL when
the worker has not answered within `settings.command_wait_seconds`. This route only decodes, calls and encodes.
"""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from services.ingest.auth import Principal, Scope, authorize_customer, require
from services.ingest.container import Container, get_container
from services.ingest.ids import PathId
from services.ingest.routes.subscriptions import COMMAND_RESPONSES, pending_answer, unit_of_work, worker_outcome
from services.ingest.service_layer import drafts
from services.ingest.service_layer.unit_of_work import UnitOfWorkFactory
from services.ingest.views import InvoiceView

router = APIRouter(tags=["invoices"])


@router.post("/v1/invoices/{invoice_id}/finalize", response_model=InvoiceView,
             responses=COMMAND_RESPONSES | {404: COMMAND_RESPONSES[404] | {"description": "Unknown invoice"}},
             summary="Finalise a draft invoice now (number it and charge it) instead of at the end of its grace",
             description="Usage of the invoice's period received so far is billed on it first. An invoice that "
                         "is final already is answered as it is (200); a void one is 409 "
                         "`/problems/invoice-not-draft` (code `invoice_not_draft`).")
async def finalize_invoice(invoice_id: PathId, request: Request, principal: Principal = Depends(require(Scope.ADMIN)),
                           container: Container = Depends(get_container),
                           uow: UnitOfWorkFactory = Depends(unit_of_work)) -> JSONResponse:
    authorize = partial(authorize_customer, principal)
    now = await run_in_threadpool(container.clock.now)
    accepted = await run_in_threadpool(drafts.finalize_invoice, uow, container.engine, invoice_id,
                                       principal=principal, authorize=authorize, now=now,
                                       request_id=request.headers.get("x-request-id"))
    if accepted is not None and await worker_outcome(container, uow, accepted) is None:
        return pending_answer(accepted.command_id, accepted.subscription_id)
    invoice = await run_in_threadpool(drafts.current, container.engine, invoice_id, authorize)
    return JSONResponse(invoice.model_dump(mode="json"), status_code=200,
                        headers={"Location": f"/v1/invoices/{invoice_id}"})

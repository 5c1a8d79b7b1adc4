"""Credit notes: issue one against a finalised invoice, read them, and their PDF/HTML document.

`POST /v1/invoices/{invoice_id}/credit-notes` (admin keys) sends `credit_note.issue` to the worker and answers
its outcome like lifecycle commands: 201 with the credit note, 409 with the refusal's code, or 202 with a poll
URL when the worker has not answered within `settings.command_wait_seconds`. The use cases are
`services.ingest.service_layer.credit_notes`; this module only decodes, calls and encodes.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from services.ingest.auth import Principal, Scope, authorize_customer, require
from services.ingest.container import Container, get_container
from services.ingest.ids import PathId
from services.ingest.pagination import Page, decode_cursor, encode_cursor
from services.ingest.problems import PROBLEM_JSON, PROBLEM_RESPONSES, Problem, ProblemError, command_rejected
from services.ingest.routes.documents import PDF, DocumentFormat, document_format, document_response
from services.ingest.routes.subscriptions import COMMAND_RESPONSES, pending_answer, unit_of_work, worker_outcome
from services.ingest.service_layer import credit_notes, views
from services.ingest.service_layer.unit_of_work import UnitOfWorkFactory
from services.ingest.views import CreditNoteView

router = APIRouter(tags=["credit notes"])
Limit = Query(50, ge=1, le=500)

REFUSALS = ("`invoice_not_creditable` (a draft or void invoice), `credit_exceeds_invoice` (the credit notes of an "
            "invoice would sum past its total), `credit_exceeds_line` (past a line's amount less earlier notes), "
            "`refund_exceeds_paid` (past what was paid in cash less earlier refunds), `unknown_line` (no such "
            "line, or a tax or negative line), `invalid_split` (refund + credit larger than the note, or a "
            "reduction the invoice does not owe)")


class CreditNoteLineRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    line_no: int = Field(ge=1, le=32_767, description="the invoice line, 1-based as listed on the invoice")
    amount_minor: int = Field(ge=1, description="pre-tax amount taken from the line; tax follows in proportion")


class CreditNoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lines: list[CreditNoteLineRequest] | None = Field(
        default=None, min_length=1, max_length=200, description="per line (pre-tax); or give `amount_minor`")
    amount_minor: int | None = Field(default=None, ge=1, description="a whole-invoice amount, tax included")
    reason: Literal["duplicate", "fraudulent", "order_change", "product_unsatisfactory"]
    memo: str | None = Field(default=None, max_length=500)
    refund_minor: int | None = Field(default=None, ge=0, description="refunded through the payment gateway "
                                                                       "(<= paid in cash less earlier refunds)")
    credit_minor: int | None = Field(default=None, ge=0, description="to the customer balance; when given, the "
                                                                       "rest reduces what the invoice still owes")

    @model_validator(mode="after")
    def _lines_or_amount(self) -> CreditNoteRequest:
        if (self.lines is None) == (self.amount_minor is None):
            raise ValueError("give exactly one of lines and amount_minor")
        return self


@router.post(
    "/v1/invoices/{invoice_id}/credit-notes", status_code=201, response_model=CreditNoteView,
    responses=COMMAND_RESPONSES | {404: COMMAND_RESPONSES[404] | {"description": "Unknown invoice"}},
    summary="Issue a credit note against a finalised invoice (whole or per line)",
    description="Give exactly one of `lines` (pre-tax amounts per invoice line) and `amount_minor` (a whole-"
                "invoice amount, tax included); tax is credited in proportion, rounded once. The note's total is "
                "split: by default it first reduces what an open or uncollectible invoice still owes, and the rest "
                "(all of it for a paid invoice) is credited to the customer's balance, which the next invoices "
                "draw from. `refund_minor` is refunded through the payment gateway instead (after the commit; "
                "see `refund_status`); with `credit_minor` also given, what is neither refunded nor credited "
                f"reduces what is owed. Refusals are 409 `/problems/rejected/<code>`: {REFUSALS}.")
async def issue_credit_note(invoice_id: PathId, body: CreditNoteRequest, request: Request,
                            principal: Principal = Depends(require(Scope.ADMIN)),
                            container: Container = Depends(get_container),
                            uow: UnitOfWorkFactory = Depends(unit_of_work)) -> JSONResponse:
    authorize = partial(authorize_customer, principal)
    now = await run_in_threadpool(container.clock.now)
    accepted = await run_in_threadpool(partial(
        credit_notes.issue, uow, container.engine, invoice_id,
        lines=[(line.line_no, line.amount_minor) for line in body.lines] if body.lines is not None else None,
        amount_minor=body.amount_minor, reason=body.reason, memo=body.memo, refund_minor=body.refund_minor,
        credit_minor=body.credit_minor, principal=principal, authorize=authorize, now=now,
        request_id=request.headers.get("x-request-id")))
    outcome = await worker_outcome(container, uow, accepted)
    if outcome is None:
        return pending_answer(accepted.command_id, accepted.subscription_id)
    if outcome.status != "applied" or not outcome.result:
        raise command_rejected(outcome.error_code, outcome.error_detail)
    note_id = str(outcome.result["credit_note_id"])
    note = await run_in_threadpool(credit_notes.credit_note, container.engine, note_id)
    assert note is not None  # the outcome is written in the transaction that stored the note
    return JSONResponse(note.model_dump(mode="json"), status_code=201,
                        headers={"Location": f"/v1/credit-notes/{note_id}"})


@router.get("/v1/credit-notes/{credit_note_id}", response_model=CreditNoteView, responses=PROBLEM_RESPONSES,
            summary="One credit note with its lines")
async def get_credit_note(credit_note_id: PathId, principal: Principal = Depends(require(Scope.READ)),
                          container: Container = Depends(get_container)) -> CreditNoteView:
    note = await run_in_threadpool(credit_notes.credit_note, container.engine, credit_note_id)
    if note is None:
        raise ProblemError(404, "Unknown credit note", f"no credit note {credit_note_id!r}", slug="not-found")
    authorize_customer(principal, note.customer_id)
    return note


@router.get("/v1/invoices/{invoice_id}/credit-notes", response_model=Page[CreditNoteView],
            responses=PROBLEM_RESPONSES, summary="The credit notes of one invoice, in number order")
async def invoice_credit_notes(invoice_id: PathId, principal: Principal = Depends(require(Scope.READ)),
                               container: Container = Depends(get_container)) -> Page[CreditNoteView]:
    invoice = await run_in_threadpool(views.invoice, container.engine, invoice_id)
    if invoice is None:
        raise ProblemError(404, "Unknown invoice", f"no invoice {invoice_id!r}", slug="not-found")
    authorize_customer(principal, invoice.customer_id)
    notes = await run_in_threadpool(credit_notes.credit_notes_of_invoice, container.engine, invoice_id)
    return Page(data=notes, next_cursor=None)


@router.get("/v1/customers/{customer_id}/credit-notes", response_model=Page[CreditNoteView],
            responses=PROBLEM_RESPONSES, summary="A customer's credit notes")
async def customer_credit_notes(customer_id: PathId, limit: int = Limit, cursor: str | None = None,
                                principal: Principal = Depends(require(Scope.READ)),
                                container: Container = Depends(get_container)) -> Page[CreditNoteView]:
    authorize_customer(principal, customer_id)
    data, nxt = await run_in_threadpool(credit_notes.credit_notes_of_customer, container.engine, customer_id,
                                        decode_cursor(cursor), limit)
    return Page(data=data, next_cursor=encode_cursor(nxt) if nxt is not None else None)


@router.get(
    "/v1/credit-notes/{credit_note_id}/document", response_class=Response,
    summary="A credit note as a PDF or HTML document (the invoice documents' layout)",
    responses={
        200: {"description": "The credit note document", "content": {
            PDF: {"schema": {"type": "string", "format": "binary"}}, "text/html": {"schema": {"type": "string"}}}},
        404: {"model": Problem, "description": "Unknown credit note", "content": {PROBLEM_JSON: {}}},
        406: {"model": Problem, "description": "`Accept` names neither application/pdf nor text/html",
              "content": {PROBLEM_JSON: {}}},
        **PROBLEM_RESPONSES,
    },
)
async def credit_note_document(
    request: Request, credit_note_id: PathId,
    format: DocumentFormat | None = Query(
        None, description="`pdf` or `html`; when absent, the `Accept` header decides (PDF by default)"),
    principal: Principal = Depends(require(Scope.READ)),
    container: Container = Depends(get_container),
) -> Response:
    chosen = document_format(format, request.headers.get("accept"))
    document = await run_in_threadpool(partial(credit_notes.document, container.engine, credit_note_id,
                                               issuer_name=container.settings.invoice_issuer_name))
    authorize_customer(principal, document.customer_id)
    return await document_response(document, chosen)

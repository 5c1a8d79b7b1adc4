"""Invoice corrections, one-off charges and the customer credit balance (issue 14).

`POST /v1/invoices/{id}/void`, `POST /v1/invoices/{id}/mark-uncollectible`, `POST /v1/invoices/{id}/retry-payment`
(an operator's payment retry, issue 19) and `POST /v1/invoices` (a one-off charge) are commands to the worker
(the only writer of invoices), answered like lifecycle commands: 200/201 with the invoice, 409 with the
refusal's code, or 202 with a poll URL. The balance reads and manual adjustments are answered by the edge itself
(`services.ingest.service_layer.customer_balance` says why). These routes only decode, call and encode; the use
cases are `services.ingest.service_layer.invoices` and `customer_balance`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool

from services.ingest.auth import Principal, Scope, authorize_customer, require
from services.ingest.container import Container, get_container
from services.ingest.ids import BodyId, CurrencyCode, PathId, PaymentMethodId
from services.ingest.pagination import Page, decode_int_cursor, encode_cursor
from services.ingest.problems import PROBLEM_RESPONSES
from services.ingest.routes.subscriptions import COMMAND_RESPONSES, pending_answer, unit_of_work, worker_outcome
from services.ingest.service_layer import customer_balance, invoices
from services.ingest.service_layer.customer_balance import AdjustmentView, BalanceEntryView, CustomerBalancesView
from services.ingest.service_layer.lifecycle import Accepted
from services.ingest.service_layer.unit_of_work import UnitOfWorkFactory
from services.ingest.views import InvoiceView

router = APIRouter(tags=["invoices"])
Limit = Query(50, ge=1, le=500)
INVOICE_RESPONSES: dict[int | str, dict[str, Any]] = COMMAND_RESPONSES | {
    404: COMMAND_RESPONSES[404] | {"description": "Unknown invoice"}}
BALANCE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **PROBLEM_RESPONSES, 404: PROBLEM_RESPONSES[409] | {"description": "Unknown customer"}}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CorrectionRequest(_Body):
    reason: str | None = Field(default=None, max_length=500)


class RetryPaymentRequest(_Body):
    payment_method_id: PaymentMethodId | None = Field(
        default=None, description="saved as the subscription's payment method (like a `payment_method.attached` "
                                  "webhook) before the charge; null: charge the one on file")


class ChargeLineRequest(_Body):
    description: str = Field(min_length=1, max_length=500)
    amount_minor: int | None = Field(default=None, description="the line's amount; or quantity x unit_amount_minor")
    quantity: int = Field(default=1, ge=1, le=1_000_000)
    unit_amount_minor: int | None = None


class OneOffChargeRequest(_Body):
    customer_id: BodyId
    subscription_id: BodyId
    lines: list[ChargeLineRequest] = Field(min_length=1, max_length=100)
    tax_rate_bps: int | None = Field(default=None, ge=0, le=10_000, description="null: the subscription's rate")


class AdjustmentRequest(_Body):
    currency: CurrencyCode
    amount_minor: int = Field(description="+ credits the customer, - debits (never below zero); not 0")
    description: str = Field(min_length=1, max_length=500)

    @field_validator("amount_minor")
    @classmethod
    def _moves_something(cls, value: int) -> int:
        if value == 0:
            raise ValueError("an adjustment moves a non-zero amount")
        return value


async def _answer_invoice(container: Container, uow: UnitOfWorkFactory, accepted: Accepted,
                          invoice_id: str | None, *, created: bool = False) -> JSONResponse:
    """The worker's outcome as an HTTP answer: the invoice as it now is, 409 refused, 202 still pending."""
    outcome = await worker_outcome(container, uow, accepted)
    if outcome is None:
        return pending_answer(accepted.command_id, accepted.subscription_id)
    invoice_id = invoice_id or str((outcome.result or {}).get("invoice_id"))
    invoice = await run_in_threadpool(invoices.current, container.engine, invoice_id, lambda _customer: None)
    return JSONResponse(invoice.model_dump(mode="json"), status_code=201 if created else 200,
                        headers={"Location": f"/v1/invoices/{invoice_id}", "X-Command-Id": str(accepted.command_id)})


async def _correct(use_case: Callable[..., Accepted], invoice_id: str, body: CorrectionRequest | None,
                   request: Request, principal: Principal, container: Container,
                   uow: UnitOfWorkFactory) -> JSONResponse:
    """A correction of an invoice (void, mark uncollectible) sent to the worker, and its answer."""
    now = await run_in_threadpool(container.clock.now)
    accepted = await run_in_threadpool(partial(
        use_case, uow, container.engine, invoice_id, body.reason if body else None,
        principal=principal, authorize=partial(authorize_customer, principal), now=now,
        request_id=request.headers.get("x-request-id")))
    return await _answer_invoice(container, uow, accepted, invoice_id)


@router.post("/v1/invoices/{invoice_id}/void", response_model=InvoiceView, responses=INVOICE_RESPONSES,
             summary="Void a draft, open or uncollectible invoice",
             description="Pending payment attempts are cancelled and what the invoice drew from the customer "
                         "balance goes back to it; the number stays used. 409 `/problems/invoice-not-voidable` "
                         "(code `invoice_not_voidable`) for a paid or void invoice.")
async def void_invoice(invoice_id: PathId, request: Request, body: CorrectionRequest | None = None,
                       principal: Principal = Depends(require(Scope.ADMIN)),
                       container: Container = Depends(get_container),
                       uow: UnitOfWorkFactory = Depends(unit_of_work)) -> JSONResponse:
    return await _correct(invoices.void_invoice, invoice_id, body, request, principal, container, uow)


@router.post("/v1/invoices/{invoice_id}/mark-uncollectible", response_model=InvoiceView,
             responses=INVOICE_RESPONSES, summary="Write an open invoice off as uncollectible",
             description="Pending payment attempts are cancelled and dunning stops chasing it. 409 "
                         "`/problems/invoice-not-open` (code `invoice_not_open`) for an invoice that is not open.")
async def mark_uncollectible(invoice_id: PathId, request: Request, body: CorrectionRequest | None = None,
                             principal: Principal = Depends(require(Scope.ADMIN)),
                             container: Container = Depends(get_container),
                             uow: UnitOfWorkFactory = Depends(unit_of_work)) -> JSONResponse:
    return await _correct(invoices.mark_uncollectible, invoice_id, body, request, principal, container, uow)


@router.post("/v1/invoices/{invoice_id}/retry-payment", response_model=InvoiceView, responses=INVOICE_RESPONSES,
             summary="Charge an open or uncollectible invoice again (an operator's retry)",
             description="The worker requests one more payment attempt for what the invoice still owes, numbered "
                         "after every earlier attempt (dunning's scheduled retries keep their own, later numbers), "
                         "optionally saving `payment_method_id` first; the answer is the invoice once the attempt "
                         "is requested (the charge itself follows: see the customer's payments). 409 "
                         "`/problems/rejected/invoice_not_collectible` (code `invoice_not_collectible`) for a "
                         "draft, paid or void invoice or one with nothing left to collect; 409 "
                         "`/problems/rejected/payment_in_flight` (code `payment_in_flight`) while an attempt of the "
                         "invoice is unsettled.")
async def retry_payment(invoice_id: PathId, request: Request, body: RetryPaymentRequest | None = None,
                        principal: Principal = Depends(require(Scope.ADMIN)),
                        container: Container = Depends(get_container),
                        uow: UnitOfWorkFactory = Depends(unit_of_work)) -> JSONResponse:
    now = await run_in_threadpool(container.clock.now)
    accepted = await run_in_threadpool(partial(
        invoices.retry_payment, uow, container.engine, invoice_id, body.payment_method_id if body else None,
        principal=principal, authorize=partial(authorize_customer, principal), now=now,
        request_id=request.headers.get("x-request-id")))
    return await _answer_invoice(container, uow, accepted, invoice_id)


@router.post("/v1/invoices", status_code=201, response_model=InvoiceView,
             responses=COMMAND_RESPONSES | {422: PROBLEM_RESPONSES[422]},
             summary="A one-off charge: a manual invoice on a subscription, finalised and charged",
             description="In the subscription's currency and payment method; drawn from the customer balance "
                         "first. 422 `/problems/invalid-charge` when the lines total zero or less (credits go "
                         "through credit notes), 409 `/problems/subscription-cancelled`.")
async def create_one_off(body: OneOffChargeRequest, request: Request,
                         principal: Principal = Depends(require(Scope.ADMIN)),
                         container: Container = Depends(get_container),
                         uow: UnitOfWorkFactory = Depends(unit_of_work)) -> JSONResponse:
    authorize_customer(principal, body.customer_id)
    now = await run_in_threadpool(container.clock.now)
    lines = [invoices.ChargeLine(description=line.description, amount_minor=line.amount_minor,
                                 quantity=line.quantity, unit_amount_minor=line.unit_amount_minor)
             for line in body.lines]
    accepted = await run_in_threadpool(partial(
        invoices.create_one_off, uow, container.engine, body.customer_id, body.subscription_id, lines,
        body.tax_rate_bps, principal=principal, authorize=partial(authorize_customer, principal), now=now,
        request_id=request.headers.get("x-request-id")))
    return await _answer_invoice(container, uow, accepted, None, created=True)


@router.get("/v1/customers/{customer_id}/balance", response_model=CustomerBalancesView,
            responses=BALANCE_RESPONSES, summary="The customer's credit balance, per currency")
async def balance(customer_id: PathId, principal: Principal = Depends(require(Scope.READ)),
                  container: Container = Depends(get_container)) -> CustomerBalancesView:
    authorize_customer(principal, customer_id)
    return await run_in_threadpool(customer_balance.balances_of, container.engine, customer_id)


@router.get("/v1/customers/{customer_id}/balance/entries", response_model=Page[BalanceEntryView],
            responses=BALANCE_RESPONSES, summary="The customer balance's entries (append-only), oldest first")
async def balance_entries(customer_id: PathId, limit: int = Limit, cursor: str | None = None,
                          principal: Principal = Depends(require(Scope.READ)),
                          container: Container = Depends(get_container)) -> Page[BalanceEntryView]:
    authorize_customer(principal, customer_id)
    data, nxt = await run_in_threadpool(customer_balance.entries_of, container.engine, customer_id,
                                        decode_int_cursor(cursor), limit)
    return Page(data=data, next_cursor=encode_cursor(nxt) if nxt is not None else None)


@router.post("/v1/customers/{customer_id}/balance/adjustments", status_code=201, response_model=AdjustmentView,
             responses=BALANCE_RESPONSES, summary="Credit (+) or debit (-) the customer's balance by hand",
             description="409 `/problems/insufficient-balance` (code `insufficient_balance`) when a debit would "
                         "take the balance below zero. Send an `Idempotency-Key`: a retry writes one entry.")
async def adjust_balance(customer_id: PathId, body: AdjustmentRequest, request: Request,
                         idempotency_key: str | None = Header(default=None, include_in_schema=False),
                         principal: Principal = Depends(require(Scope.ADMIN)),
                         container: Container = Depends(get_container)) -> AdjustmentView:
    authorize_customer(principal, customer_id)
    now = await run_in_threadpool(container.clock.now)
    return await run_in_threadpool(partial(
        customer_balance.adjust, container.engine, customer_id, body.currency, body.amount_minor,
        body.description, principal=principal, idempotency_key=idempotency_key, now=now,
        request_id=request.headers.get("x-request-id")))

"""Previews: the upcoming invoice of a subscription and a plan or seat change previewed at an instant
(issue 14, item 5). Computed by the domain code that bills (`services.ingest.service_layer.previews`);
nothing is written and no command is sent. A change the worker would refuse is answered as the real command
is: 409 `/problems/rejected/<code>` with the domain's code."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from services.ingest.auth import Principal, Scope, authorize_customer, require
from services.ingest.container import Container, get_container
from services.ingest.ids import BodyId, PathId
from services.ingest.problems import PROBLEM_RESPONSES, FieldError, ProblemError, command_rejected
from services.ingest.routes.subscriptions import owner_of
from services.ingest.service_layer import previews
from shared.domain.errors import DomainError
from shared.domain.invoice import LineKind
from shared.errors import refusal_code

router = APIRouter(tags=["previews"])

PREVIEW_RESPONSES: dict[int | str, dict[str, Any]] = {
    **PROBLEM_RESPONSES,
    404: PROBLEM_RESPONSES[409] | {"description": "Unknown subscription"},
}
# Lines whose amount depends on usage still to come (and the discount and tax computed over them).
_USAGE_DEPENDENT = frozenset({LineKind.USAGE, LineKind.CREDIT, LineKind.ADJUSTMENT, LineKind.DISCOUNT,
                              LineKind.TAX})


class PreviewLineView(BaseModel):
    kind: str
    description: str
    amount_minor: int
    currency: str
    quantity: Decimal
    unit_price: Decimal | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None
    meter_id: str | None = None
    proration: bool
    taxable: bool
    estimate: bool = Field(description="true when usage still to come may change this line")


class InvoicePreviewView(BaseModel):
    """An invoice as the worker would issue it, before numbering. `invoice_id` is the id it will get."""

    invoice_id: str
    kind: str
    period_start: datetime
    period_end: datetime
    currency: str
    plan_id: str
    billed_at: datetime = Field(description="the instant the worker would issue it")
    estimate: bool = Field(description="usage may still arrive before `billed_at`: usage lines, credits, "
                                       "discount and tax may change")
    lines: list[PreviewLineView]
    subtotal_minor: int
    discount_minor: int
    credits_applied_minor: int
    tax_rate_bps: int
    tax_minor: int
    total_minor: int
    balance_applied_minor: int = Field(description="drawn from the customer's credit balance at finalisation, "
                                                   "as the balance stands now")
    credited_to_balance_minor: int = Field(description="a negative total: credited to the customer's balance")
    amount_due_minor: int = Field(description="max(total, 0) - balance_applied: what would be charged")


class UpcomingInvoiceView(BaseModel):
    subscription_id: str
    customer_id: str
    as_of: datetime = Field(description="the billing clock's instant the usage so far was read at")
    invoice: InvoicePreviewView


class ChangePreviewRequest(BaseModel):
    """A plan change (`plan_id`, `timing` as `change-plan` takes it) or a seat change (`seats`), at `at`
    (default: the billing clock's now)."""

    model_config = ConfigDict(extra="forbid")
    plan_id: BodyId | None = None
    seats: int | None = Field(default=None, ge=1, le=100_000)
    timing: previews.Timing = "auto"
    at: AwareDatetime | None = None

    @model_validator(mode="after")
    def _one_change(self) -> ChangePreviewRequest:
        if (self.plan_id is None) == (self.seats is None):
            raise ValueError("give exactly one of plan_id or seats")
        return self


class ChangePreviewView(BaseModel):
    subscription_id: str
    customer_id: str
    at: datetime = Field(description="the instant the change is previewed at")
    change: str
    timing: str
    deferred: bool = Field(description="true when the change waits for the period end (nothing billed now)")
    effective_at: datetime
    invoice_now: InvoicePreviewView | None = Field(description="the invoice the change would issue at `at`")
    next_invoice: InvoicePreviewView | None = Field(description="the next invoice after the change")


def invoice_view(preview: previews.InvoicePreview) -> InvoicePreviewView:
    inv = preview.invoice
    return InvoicePreviewView(
        invoice_id=inv.id, kind=inv.key.reason.value, period_start=inv.period.start, period_end=inv.period.end,
        currency=inv.currency, plan_id=preview.plan_id, billed_at=preview.billed_at, estimate=preview.estimate,
        lines=[PreviewLineView(
            kind=line.kind.value, description=line.description, amount_minor=line.amount.amount_minor,
            currency=line.amount.currency, quantity=line.quantity,
            unit_price=line.unit_price.amount if line.unit_price else None,
            period_start=line.period.start if line.period else None,
            period_end=line.period.end if line.period else None, meter_id=line.meter_id,
            proration=line.proration, taxable=line.is_taxable,
            estimate=preview.estimate and (line.kind in _USAGE_DEPENDENT or line.meter_id is not None))
            for line in inv.lines],
        subtotal_minor=inv.subtotal.amount_minor, discount_minor=inv.discount.amount_minor,
        credits_applied_minor=inv.credits_applied.amount_minor, tax_rate_bps=inv.tax_rate_bps,
        tax_minor=inv.tax.amount_minor, total_minor=inv.total.amount_minor,
        balance_applied_minor=inv.balance_applied_minor,
        credited_to_balance_minor=inv.credit_to_carry_forward.amount_minor,
        amount_due_minor=inv.amount_due.amount_minor)


async def _authorized(container: Container, principal: Principal, subscription_id: str) -> None:
    owner = await run_in_threadpool(owner_of, container.engine, subscription_id)
    if owner is None:
        raise ProblemError(404, "Unknown subscription", f"no subscription {subscription_id!r}", slug="not-found")
    authorize_customer(principal, owner)


@router.get("/v1/subscriptions/{subscription_id}/upcoming-invoice", response_model=UpcomingInvoiceView,
            responses=PREVIEW_RESPONSES, summary="The next invoice as it stands (usage so far rated)",
            description="The invoice the worker will issue next: the period close at the period end (usage so "
                        "far against the included credits, late usage, the next period's fee, coupon, tax) or "
                        "the first invoice at the end of a trial. Computed by the rating code that bills; "
                        "`estimate` marks what usage still to come may change. 409 "
                        "`/problems/no-upcoming-invoice` for a cancelled subscription.")
async def upcoming_invoice(subscription_id: PathId, principal: Principal = Depends(require(Scope.READ)),
                           container: Container = Depends(get_container)) -> UpcomingInvoiceView:
    await _authorized(container, principal, subscription_id)
    now = await run_in_threadpool(container.clock.now)
    catalog = await run_in_threadpool(container.current_catalog)  # the stored catalog (API plans, versions)
    upcoming = await run_in_threadpool(
        previews.upcoming_invoice, previews.SqlSnapshots(container.engine, catalog), catalog,
        subscription_id, now=now, authorize=lambda customer_id: authorize_customer(principal, customer_id))
    return UpcomingInvoiceView(subscription_id=upcoming.subscription_id, customer_id=upcoming.customer_id,
                               as_of=upcoming.as_of, invoice=invoice_view(upcoming.invoice))


@router.post("/v1/subscriptions/{subscription_id}/preview", response_model=ChangePreviewView,
             responses=PREVIEW_RESPONSES, summary="Preview a plan or seat change at an instant (nothing changes)",
             description="What `change-plan` or `seats` would do at `at` (default now): the proration invoice "
                         "it would issue then, or `deferred` to the period end, and the next invoice after it. "
                         "Refused as the real command would be (409 `/problems/rejected/<code>`); an unknown "
                         "plan is 422.")
async def preview_change(subscription_id: PathId, body: ChangePreviewRequest,
                         principal: Principal = Depends(require(Scope.READ)),
                         container: Container = Depends(get_container)) -> ChangePreviewView:
    catalog = await run_in_threadpool(container.current_catalog, body.plan_id)
    if body.plan_id is not None and body.plan_id not in catalog.plans:
        raise ProblemError(422, "Unknown plan", f"unknown plan {body.plan_id!r}", slug="validation",
                           errors=[FieldError(field="plan_id", reason="not in the catalog")])
    await _authorized(container, principal, subscription_id)
    instant: datetime = body.at if body.at is not None else await run_in_threadpool(container.clock.now)
    plan_id = container.current_plan_id(body.plan_id) if body.plan_id is not None else None  # as change-plan
    request = previews.ChangeRequest(plan_id=plan_id, seats=body.seats, timing=body.timing)
    try:
        preview = await run_in_threadpool(
            previews.preview_change, previews.SqlSnapshots(container.engine, catalog), catalog,
            subscription_id, request, at=instant,
            authorize=lambda customer_id: authorize_customer(principal, customer_id))
    except DomainError as refused:  # what the worker would store as the command's rejection
        raise command_rejected(refusal_code(refused), str(refused)) from refused
    return ChangePreviewView(
        subscription_id=preview.subscription_id, customer_id=preview.customer_id, at=preview.at,
        change=preview.kind.value, timing=preview.timing.value, deferred=preview.deferred,
        effective_at=preview.effective_at,
        invoice_now=invoice_view(preview.invoice_now) if preview.invoice_now else None,
        next_invoice=invoice_view(preview.next_invoice) if preview.next_invoice else None)

"""Customer onboarding (users and organisations) and customer reads: decode, call
`services.ingest.service_layer.customers` (where the onboarding steps and their idempotency are described),
encode."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool

from services.ingest.auth import Principal, Scope, authorize_customer, require
from services.ingest.container import Container, get_container
from services.ingest.ids import CurrencyCode, PathId, PaymentMethodId
from services.ingest.pagination import Page, decode_cursor, encode_cursor
from services.ingest.problems import PROBLEM_RESPONSES, ProblemError
from services.ingest.service_layer import customers as onboarding
from services.ingest.service_layer.customers import customer_id_for
from services.ingest.service_layer.unit_of_work import CustomerRecord, Member, UnitOfWorkFactory, sql_unit_of_work
from services.ingest.stripe_customers import StripeCustomers
from services.ingest.time_zones import TimeZoneName
from shared.domain.invoice_grace import MAX_GRACE_SECONDS

__all__ = ["CustomerView", "customer_id_for", "router"]

router = APIRouter(tags=["customers"])
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
GRACE_TEXT = ("seconds a period-close invoice stays draft (late usage of its period still lands on it) before it "
              "is finalised; null: the issuer's default (BILLING_INVOICE_GRACE_SECONDS), 0: finalised at the close")


class MemberIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(min_length=1, max_length=128)
    email: str | None = Field(default=None, pattern=EMAIL_PATTERN, max_length=254)
    role: Literal["owner", "admin", "member"] = "member"


class OnboardRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    external_id: str = Field(min_length=1, max_length=128, description="your id for this user or organisation")
    kind: Literal["user", "org"]
    name: str = Field(min_length=1, max_length=200)
    email: str = Field(pattern=EMAIL_PATTERN, max_length=254)
    currency: CurrencyCode
    timezone: TimeZoneName = "UTC"
    tax_rate_bps: int = Field(default=0, ge=0, le=10_000, description="tax rate in basis points (2000 = 20%)")
    members: list[MemberIn] = Field(default_factory=list, max_length=10_000)
    aliases: list[str] = Field(default_factory=list, max_length=100, description="ingest aliases")
    payment_method_id: PaymentMethodId | None = Field(default=None,
                                                      description="a Stripe payment method token; never card data")
    invoice_grace_seconds: int | None = Field(default=None, ge=0, le=MAX_GRACE_SECONDS, description=GRACE_TEXT)

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, value: list[str]) -> list[str]:
        if any(not a or len(a) > 128 for a in value):
            raise ValueError("aliases are 1 to 128 characters")
        return sorted(set(value))


class MemberView(BaseModel):
    user_id: str
    email: str | None = None
    role: str


class CustomerView(BaseModel):
    customer_id: str
    external_id: str
    kind: str
    name: str
    email: str
    currency: str
    timezone: str
    tax_rate_bps: int
    stripe_customer_id: str | None = None
    default_payment_method_id: str | None = None
    invoice_grace_seconds: int | None = Field(default=None, description=GRACE_TEXT)
    aliases: list[str] = Field(default_factory=list)
    members: list[MemberView] = Field(default_factory=list)


def _view(record: CustomerRecord) -> CustomerView:
    return CustomerView.model_validate(onboarding.as_dict(record))


def unit_of_work(container: Container = Depends(get_container)) -> UnitOfWorkFactory:
    return sql_unit_of_work(container.engine)


_ONBOARD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": CustomerView, "description": "Already onboarded with the same data: the customer as it is"},
    **PROBLEM_RESPONSES,
}


@router.post("/v1/customers", response_model=CustomerView, status_code=201, responses=_ONBOARD_RESPONSES,
             summary="Onboard a user or an organisation (creates the Stripe customer)")
async def onboard(body: OnboardRequest, request: Request, principal: Principal = Depends(require(Scope.ADMIN)),
                  container: Container = Depends(get_container),
                  uow: UnitOfWorkFactory = Depends(unit_of_work)) -> JSONResponse:
    command = onboarding.Onboard(
        external_id=body.external_id, kind=body.kind, name=body.name, email=str(body.email),
        currency=body.currency, timezone=body.timezone, tax_rate_bps=body.tax_rate_bps,
        members=[Member(m.user_id, str(m.email) if m.email else None, m.role) for m in body.members],
        aliases=body.aliases, payment_method_id=body.payment_method_id,
        invoice_grace_seconds=body.invoice_grace_seconds)
    record, created = await run_in_threadpool(  # refusals: answered by the problem layer
        onboarding.onboard, uow, StripeCustomers(container.stripe), command, principal=principal,
        request_id=request.headers.get("x-request-id"))
    return JSONResponse(_view(record).model_dump(mode="json"), status_code=201 if created else 200,
                        headers={"Location": f"/v1/customers/{record.customer_id}"})


@router.get("/v1/customers", response_model=Page[CustomerView], responses=PROBLEM_RESPONSES,
            summary="List customers (admin)")
async def list_customers(limit: int = Query(50, ge=1, le=500), cursor: str | None = None,
                         _: Principal = Depends(require(Scope.ADMIN)),
                         uow: UnitOfWorkFactory = Depends(unit_of_work)) -> Page[CustomerView]:
    records, more = await run_in_threadpool(onboarding.customers_page, uow, decode_cursor(cursor), limit)
    views = [_view(r) for r in records]
    return Page(data=views, next_cursor=encode_cursor(views[-1].customer_id) if more and views else None)


@router.get("/v1/customers/{customer_id}", response_model=CustomerView, responses=PROBLEM_RESPONSES,
            summary="One customer")
async def get_customer(customer_id: PathId, principal: Principal = Depends(require(Scope.READ)),
                       uow: UnitOfWorkFactory = Depends(unit_of_work)) -> CustomerView:
    authorize_customer(principal, customer_id)
    record = await run_in_threadpool(onboarding.customer, uow, customer_id)
    if record is None:
        raise ProblemError(404, "Unknown customer", f"no customer {customer_id!r}", slug="not-found")
    return _view(record)


class InvoiceSettingsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    invoice_grace_seconds: int | None = Field(ge=0, le=MAX_GRACE_SECONDS, description=GRACE_TEXT)


@router.put("/v1/customers/{customer_id}/invoice-settings", response_model=CustomerView,
            responses=PROBLEM_RESPONSES, summary="Set how long the customer's period-close invoices stay draft",
            description="Applies to the periods closed from now on; a draft already stored keeps its "
                        "`finalizes_at`.")
async def put_invoice_settings(customer_id: PathId, body: InvoiceSettingsRequest, request: Request,
                               principal: Principal = Depends(require(Scope.ADMIN)),
                               uow: UnitOfWorkFactory = Depends(unit_of_work)) -> CustomerView:
    authorize_customer(principal, customer_id)
    record = await run_in_threadpool(onboarding.set_invoice_grace, uow, customer_id, body.invoice_grace_seconds,
                                     principal=principal, request_id=request.headers.get("x-request-id"))
    return _view(record)

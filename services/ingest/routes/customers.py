"""Customer onboarding (users and organisations) and customer reads.

Onboarding is idempotent by `external_id` (with or without an Idempotency-Key):
1. the customer row is written first (its id derives from the external id), with aliases and members;
2. the Stripe customer is created with an idempotency key derived from the customer id (itself derived
   from the external id), then recorded;
3. the payment method token (`pm_...`) is attached, then recorded as the default.
A retry after a failure at any step resumes where it stopped; a retry of a finished onboarding with the
same data answers 200 with the customer, with different data 409. Stripe keeps idempotency keys for 24 h;
since our row exists before the Stripe call and records the Stripe id right after, a second Stripe
customer can only appear if a crash between those two statements is followed by a retry more than 24 h
later.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

import sqlalchemy as sa
import stripe
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.dialects.postgresql import insert
from starlette.concurrency import run_in_threadpool

from services.ingest.audit import record
from services.ingest.auth import Principal, Scope, authorize_customer, require
from services.ingest.container import Container, get_container
from services.ingest.ids import PathId, PaymentMethodId
from services.ingest.pagination import Page, decode_cursor, encode_cursor
from services.ingest.problems import PROBLEM_RESPONSES, FieldError, ProblemError
from services.ingest.time_zones import TimeZoneName
from shared.adapters.postgres.schema.core import customer_aliases, customers, org_members
from shared.errors import InfrastructureError

router = APIRouter(tags=["customers"])
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
_CUSTOMER_NAMESPACE = uuid.UUID("0b7f3c52-2f0d-4d1e-8c55-6a0f5f7e9a11")


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
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    timezone: TimeZoneName = "UTC"
    tax_rate_bps: int = Field(default=0, ge=0, le=10_000, description="tax rate in basis points (2000 = 20%)")
    members: list[MemberIn] = Field(default_factory=list, max_length=10_000)
    aliases: list[str] = Field(default_factory=list, max_length=100, description="ingest aliases")
    payment_method_id: PaymentMethodId | None = Field(default=None,
                                                      description="a Stripe payment method token; never card data")

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
    aliases: list[str] = Field(default_factory=list)
    members: list[MemberView] = Field(default_factory=list)


def customer_id_for(external_id: str) -> str:
    return f"cust_{uuid.uuid5(_CUSTOMER_NAMESPACE, external_id).hex[:24]}"


def load_customer(conn: sa.Connection, customer_id: str) -> CustomerView | None:
    row = conn.execute(sa.select(customers).where(customers.c.customer_id == customer_id)).one_or_none()
    if row is None:
        return None
    aliases = conn.execute(sa.select(customer_aliases.c.alias).where(customer_aliases.c.customer_id == customer_id)
                           .order_by(customer_aliases.c.alias)).scalars().all()
    members = conn.execute(sa.select(org_members).where(org_members.c.customer_id == customer_id)
                           .order_by(org_members.c.user_id)).all()
    return CustomerView(**{k: v for k, v in row._mapping.items() if k in CustomerView.model_fields},
                        aliases=list(aliases),
                        members=[MemberView(user_id=m.user_id, email=m.email, role=m.role) for m in members])


_SAME_FIELDS = ("kind", "name", "email", "currency", "timezone", "tax_rate_bps")


def _write_customer(engine: sa.Engine, body: OnboardRequest, principal: Principal,
                    request_id: str | None) -> tuple[CustomerView, bool]:
    customer_id = customer_id_for(body.external_id)
    if body.kind == "user" and body.members:
        raise ProblemError(422, "Members are for organisations", slug="validation",
                           errors=[FieldError(field="members", reason="a user has no members")])
    with engine.begin() as conn:
        created = conn.execute(insert(customers).values(
            customer_id=customer_id, external_id=body.external_id, kind=body.kind, name=body.name,
            email=str(body.email), currency=body.currency, timezone=body.timezone, tax_rate_bps=body.tax_rate_bps,
        ).on_conflict_do_nothing(index_elements=["external_id"]).returning(customers.c.customer_id)).first()
        if created is None:
            existing = conn.execute(sa.select(customers).where(customers.c.external_id == body.external_id)
                                    .with_for_update()).one()
            wanted = body.model_dump(mode="json")
            differing = [f for f in _SAME_FIELDS if getattr(existing, f) != wanted[f]]
            if differing:
                raise ProblemError(409, "Already onboarded", "this external_id was onboarded with other data",
                                   slug="already-onboarded",
                                   errors=[FieldError(field=f, reason="differs from the onboarded customer")
                                           for f in differing])
        if body.aliases:
            conn.execute(insert(customer_aliases).on_conflict_do_nothing(),
                         [{"alias": a, "customer_id": customer_id} for a in body.aliases])
            owners: dict[str, str] = {r.alias: r.customer_id for r in conn.execute(
                sa.select(customer_aliases.c.alias, customer_aliases.c.customer_id)
                .where(customer_aliases.c.alias.in_(body.aliases)))}
            taken = [a for a in body.aliases if owners.get(a) != customer_id]
            if taken:
                raise ProblemError(409, "Alias taken", "an alias belongs to another customer", slug="alias-taken",
                                   errors=[FieldError(field="aliases", reason=f"{a!r} is taken") for a in taken])
        if body.members:
            conn.execute(insert(org_members).on_conflict_do_nothing(), [
                {"customer_id": customer_id, "user_id": m.user_id, "email": str(m.email) if m.email else None,
                 "role": m.role} for m in body.members])
        if created is not None:
            record(conn, principal, "customer.onboard", customer_id=customer_id, request_id=request_id,
                   external_id=body.external_id, kind=body.kind)
        view = load_customer(conn, customer_id)
    assert view is not None
    return view, created is not None


def _stripe_call(call: Any) -> Any:
    """Run a Stripe call; translate its errors into ours (client error 422, outage 503)."""
    try:
        return call()
    except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
        raise InfrastructureError(f"stripe unavailable: {type(exc).__name__}") from exc
    except stripe.StripeError as exc:
        if exc.http_status is not None and exc.http_status >= 500:
            raise InfrastructureError(f"stripe error {exc.http_status}") from exc
        raise ProblemError(422, "Refused by the payment provider", exc.user_message or "request refused",
                           slug="payment-provider", errors=[FieldError(field="payment_method_id",
                                                                       reason=getattr(exc, "code", None)
                                                                       or "refused")]) from exc


def _ensure_stripe(container: Container, view: CustomerView, body: OnboardRequest) -> CustomerView:
    client = container.stripe
    changes: dict[str, str] = {}
    stripe_id = view.stripe_customer_id
    if stripe_id is None:
        created = _stripe_call(lambda: client.v1.customers.create(
            params={"email": view.email, "name": view.name,
                    "metadata": {"customer_id": view.customer_id, "external_id": view.external_id}},
            # The customer id derives from the external id (same key on every retry) and, unlike the
            # external id, is ASCII: HTTP headers cannot carry arbitrary Unicode.
            options={"idempotency_key": f"onboard-customer:{view.customer_id}"}))
        stripe_id = changes["stripe_customer_id"] = created.id
    if body.payment_method_id and body.payment_method_id != view.default_payment_method_id:
        pm_id = body.payment_method_id
        _stripe_call(lambda: client.v1.payment_methods.attach(
            pm_id, params={"customer": stripe_id},
            options={"idempotency_key": f"attach-pm:{view.customer_id}:{pm_id}"}))
        changes["default_payment_method_id"] = pm_id
    if not changes:
        return view
    with container.engine.begin() as conn:
        conn.execute(sa.update(customers).where(customers.c.customer_id == view.customer_id).values(**changes))
        fresh = load_customer(conn, view.customer_id)
    assert fresh is not None
    return fresh


_ONBOARD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": CustomerView, "description": "Already onboarded with the same data: the customer as it is"},
    **PROBLEM_RESPONSES,
}


@router.post("/v1/customers", response_model=CustomerView, status_code=201, responses=_ONBOARD_RESPONSES,
             summary="Onboard a user or an organisation (creates the Stripe customer)")
async def onboard(body: OnboardRequest, request: Request, principal: Principal = Depends(require(Scope.ADMIN)),
                  container: Container = Depends(get_container)) -> JSONResponse:
    view, created = await run_in_threadpool(_write_customer, container.engine, body, principal,
                                            request.headers.get("x-request-id"))
    view = await run_in_threadpool(_ensure_stripe, container, view, body)
    return JSONResponse(view.model_dump(mode="json"), status_code=201 if created else 200,
                        headers={"Location": f"/v1/customers/{view.customer_id}"})


@router.get("/v1/customers", response_model=Page[CustomerView], responses=PROBLEM_RESPONSES,
            summary="List customers (admin)")
async def list_customers(limit: int = Query(50, ge=1, le=500), cursor: str | None = None,
                         _: Principal = Depends(require(Scope.ADMIN)),
                         container: Container = Depends(get_container)) -> Page[CustomerView]:
    after = decode_cursor(cursor)

    def load() -> tuple[list[CustomerView], bool]:
        query = sa.select(customers.c.customer_id).order_by(customers.c.customer_id).limit(limit + 1)
        if after is not None:
            query = query.where(customers.c.customer_id > after)
        with container.engine.connect() as conn:
            ids = conn.execute(query).scalars().all()
            views = [load_customer(conn, i) for i in ids[:limit]]
        return [v for v in views if v is not None], len(ids) > limit

    views, more = await run_in_threadpool(load)
    return Page(data=views, next_cursor=encode_cursor(views[-1].customer_id) if more and views else None)


@router.get("/v1/customers/{customer_id}", response_model=CustomerView, responses=PROBLEM_RESPONSES,
            summary="One customer")
async def get_customer(customer_id: PathId, principal: Principal = Depends(require(Scope.READ)),
                       container: Container = Depends(get_container)) -> CustomerView:
    authorize_customer(principal, customer_id)

    def load() -> CustomerView | None:
        with container.engine.connect() as conn:
            return load_customer(conn, customer_id)

    view = await run_in_threadpool(load)
    if view is None:
        raise ProblemError(404, "Unknown customer", f"no customer {customer_id!r}", slug="not-found")
    return view

"""The catalog API (admin): meters, plans and their versions, coupons. Decode, call
`services.ingest.service_layer.catalog`, encode. A body is a catalog document's entry, as in the YAML files
of `shared/catalogs/` (decimal amounts as strings: "9.00"), validated by the same rules; a refusal names the
field at fault (problem+json `errors`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from services.ingest.auth import Principal, Scope, require
from services.ingest.container import Container, get_container
from services.ingest.ids import PathId
from services.ingest.problems import PROBLEM_RESPONSES
from services.ingest.service_layer import catalog as use_cases
from shared.adapters.catalog_file import read_catalog_documents

router = APIRouter(tags=["catalog"])

Amount = str | int  # a decimal string ("9.00") or an integer; a JSON float is refused (inexact)


class MeterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=100)
    name: str | None = Field(default=None, max_length=200)
    unit: str = Field(min_length=1, max_length=100)
    event_type: str = Field(min_length=1, max_length=100)
    aggregation: Literal["sum", "count"]
    value_property: str | None = Field(default=None, max_length=100, description="summed by sum meters")
    dimension: str | None = Field(default=None, max_length=100, description="an event property keying prices")
    description: str | None = Field(default=None, max_length=500)


class MeterUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=500)
    archived: bool | None = Field(default=None, description="true archives the meter (kept for what refers to it)")


class PlanDefinition(BaseModel):
    """A plan as the YAML files write it (see `shared/catalogs/`)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    family: str = Field(min_length=1, max_length=100)
    interval: Literal["month", "year"]
    currency: str = Field(min_length=3, max_length=3)
    price: Amount = Field(default="0", description="the recurring fee per interval")
    seat_price: Amount | None = None
    trial_days: int | None = Field(default=None, ge=0, le=730)
    features: list[str] | None = Field(default=None, max_length=200)
    entitlements: dict[str, int | bool | str] | None = None
    meters: dict[str, dict[str, Any]] | None = Field(
        default=None, description="meter id -> {unit_price | pricing, overage, included, dimensions}")
    change_timing: Literal["period_end", "immediate"] | None = None
    trial_end_without_payment_method: Literal["past_due", "cancel"] | None = None
    quota: dict[str, Any] | None = None
    description: str | None = Field(default=None, max_length=500)
    unused_fee_policy: Literal["none", "credit", "refund"] | None = None
    prices: dict[str, dict[str, Any]] | None = Field(
        default=None, description="the plan's price lists in other currencies, each restating its amounts: "
                                  "{EUR: {price, seat_price?, meters?}}; the customer's currency picks one")


class PlanRequest(PlanDefinition):
    id: str = Field(min_length=1, max_length=100)


class CouponRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=100)
    name: str | None = Field(default=None, max_length=200)
    percent_off: Amount | None = None
    amount_off: Amount | None = None
    currency: str | None = Field(default=None, min_length=3, max_length=3)
    duration: Literal["once", "repeating", "forever"]
    duration_periods: int | None = Field(default=None, ge=1)
    max_redemptions: int | None = Field(default=None, ge=1)
    redeem_by: datetime | None = None
    applies_to: Literal["fee", "fee_and_usage"] | None = None
    plans: list[str] | None = Field(default=None, max_length=200)
    description: str | None = Field(default=None, max_length=500)


class EntryView(BaseModel):
    id: str
    definition: dict[str, Any] = Field(description="the entry as a catalog document holds it")
    created_at: datetime
    archived_at: datetime | None = None


class PlanVersionView(BaseModel):
    version: int
    definition: dict[str, Any]
    created_at: datetime


class PlanView(BaseModel):
    plan_id: str
    current_version: int = Field(description="what new subscriptions get")
    definition: dict[str, Any] = Field(description="the current version's definition")
    created_at: datetime
    archived_at: datetime | None = None
    versions: list[PlanVersionView]


class EntryList(BaseModel):
    data: list[EntryView]


class PlanList(BaseModel):
    data: list[PlanView]


def _entry(entry: use_cases.Entry) -> EntryView:
    return EntryView(id=entry.id, definition=entry.definition, created_at=entry.created_at,
                     archived_at=entry.archived_at)


def _plan(plan: use_cases.StoredPlan) -> PlanView:
    return PlanView(plan_id=plan.plan_id, current_version=plan.current_version, definition=plan.definition,
                    created_at=plan.created_at, archived_at=plan.archived_at,
                    versions=[PlanVersionView(version=v.version, definition=v.definition, created_at=v.created_at)
                              for v in plan.versions])


def _definition(body: BaseModel) -> dict[str, Any]:
    return body.model_dump(mode="json", exclude_none=True)


async def _write(request: Request, principal: Principal, container: Container) -> use_cases.Write:
    now = await run_in_threadpool(container.clock.now)
    directory = container.settings.catalog_dir
    return use_cases.Write(principal=principal, at=now, request_id=request.headers.get("x-request-id"),
                           bootstrap=lambda: read_catalog_documents(sorted(directory.glob("*.yaml"))))


async def _refreshed(container: Container) -> None:
    """The edge serves what it just stored at once (the worker reloads on its next batch)."""
    if container.catalog_provider is not None:
        await run_in_threadpool(container.catalog_provider.refresh)


# --- meters ---------------------------------------------------------------------------------------------


@router.post("/v1/meters", response_model=EntryView, status_code=201, responses=PROBLEM_RESPONSES,
             summary="Create a meter (admin): a billable metric fed by usage events of one type")
async def create_meter(body: MeterRequest, request: Request, principal: Principal = Depends(require(Scope.ADMIN)),
                       container: Container = Depends(get_container)) -> EntryView:
    write = await _write(request, principal, container)
    created = await run_in_threadpool(use_cases.create_meter, container.engine, _definition(body), write)
    await _refreshed(container)
    return _entry(created)


@router.get("/v1/meters", response_model=EntryList, responses=PROBLEM_RESPONSES, summary="Stored meters (admin)")
async def list_meters(_: Principal = Depends(require(Scope.ADMIN)),
                      container: Container = Depends(get_container)) -> EntryList:
    return EntryList(data=[_entry(m) for m in await run_in_threadpool(use_cases.meters, container.engine)])


@router.get("/v1/meters/{meter_id}", response_model=EntryView, responses=PROBLEM_RESPONSES, summary="A meter (admin)")
async def get_meter(meter_id: PathId, _: Principal = Depends(require(Scope.ADMIN)),
                    container: Container = Depends(get_container)) -> EntryView:
    return _entry(await run_in_threadpool(use_cases.meter, container.engine, meter_id))


@router.patch("/v1/meters/{meter_id}", response_model=EntryView, responses=PROBLEM_RESPONSES,
              summary="Rename, describe or archive a meter (admin); another aggregation is another meter")
async def update_meter(meter_id: PathId, body: MeterUpdate, request: Request,
                       principal: Principal = Depends(require(Scope.ADMIN)),
                       container: Container = Depends(get_container)) -> EntryView:
    write = await _write(request, principal, container)
    updated = await run_in_threadpool(use_cases.update_meter, container.engine, meter_id,
                                      body.model_dump(exclude_unset=True, exclude_none=True), write)
    await _refreshed(container)
    return _entry(updated)


# --- plans ----------------------------------------------------------------------------------------------


@router.post("/v1/plans", response_model=PlanView, status_code=201, responses=PROBLEM_RESPONSES,
             summary="Create a plan (admin): its version 1")
async def create_plan(body: PlanRequest, request: Request, principal: Principal = Depends(require(Scope.ADMIN)),
                      container: Container = Depends(get_container)) -> PlanView:
    write = await _write(request, principal, container)
    created = await run_in_threadpool(use_cases.create_plan, container.engine, _definition(body), write)
    await _refreshed(container)
    return _plan(created)


@router.get("/v1/plans", response_model=PlanList, responses=PROBLEM_RESPONSES, summary="Stored plans (admin)")
async def list_plans(_: Principal = Depends(require(Scope.ADMIN)),
                     container: Container = Depends(get_container)) -> PlanList:
    return PlanList(data=[_plan(p) for p in await run_in_threadpool(use_cases.plans, container.engine)])


@router.get("/v1/plans/{plan_id}", response_model=PlanView, responses=PROBLEM_RESPONSES,
            summary="A plan (admin): its current version and every version")
async def get_plan(plan_id: PathId, _: Principal = Depends(require(Scope.ADMIN)),
                   container: Container = Depends(get_container)) -> PlanView:
    return _plan(await run_in_threadpool(use_cases.plan, container.engine, plan_id))


@router.post("/v1/plans/{plan_id}/versions", response_model=PlanView, status_code=201, responses=PROBLEM_RESPONSES,
             summary="A new version of a plan (admin): new subscriptions get it, existing ones keep theirs")
async def add_plan_version(plan_id: PathId, body: PlanDefinition, request: Request,
                           principal: Principal = Depends(require(Scope.ADMIN)),
                           container: Container = Depends(get_container)) -> PlanView:
    write = await _write(request, principal, container)
    updated = await run_in_threadpool(use_cases.add_plan_version, container.engine, plan_id, _definition(body), write)
    await _refreshed(container)
    return _plan(updated)


@router.post("/v1/plans/{plan_id}/archive", response_model=PlanView, responses=PROBLEM_RESPONSES,
             summary="Archive a plan (admin): kept for its subscriptions and invoices")
async def archive_plan(plan_id: PathId, request: Request, principal: Principal = Depends(require(Scope.ADMIN)),
                       container: Container = Depends(get_container)) -> PlanView:
    write = await _write(request, principal, container)
    archived = await run_in_threadpool(use_cases.archive_plan, container.engine, plan_id, write)
    await _refreshed(container)
    return _plan(archived)


@router.delete("/v1/plans/{plan_id}", response_model=PlanView, responses=PROBLEM_RESPONSES,
               summary="Retire a plan (admin): 409 in_use while a subscription refers to it, else archived "
                       "(never deleted: invoices may refer to it)")
async def delete_plan(plan_id: PathId, request: Request, principal: Principal = Depends(require(Scope.ADMIN)),
                      container: Container = Depends(get_container)) -> PlanView:
    write = await _write(request, principal, container)
    archived = await run_in_threadpool(use_cases.archive_plan, container.engine, plan_id, write, refuse_in_use=True)
    await _refreshed(container)
    return _plan(archived)


class MigratePlanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    from_version: int = Field(ge=1, description="the version whose subscriptions move")
    to_version: int | None = Field(default=None, ge=1, description="default: the plan's current version")
    at: Literal["period_end", "now"] = Field(default="period_end",
                                             description="period_end: each period under way keeps its price")


class MigrationCommand(BaseModel):
    subscription_id: str
    command_id: str = Field(description="poll GET /v1/commands/{id} for the worker's outcome")


class PlanMigrationView(BaseModel):
    plan_id: str
    from_version: int
    to_version: int
    at: Literal["period_end", "now"]
    commands: list[MigrationCommand]


@router.post("/v1/plans/{plan_id}/migrate", response_model=PlanMigrationView, status_code=202,
             responses=PROBLEM_RESPONSES,
             summary="Move every subscription on one version of a plan to another (admin): one command each")
async def migrate_plan(plan_id: PathId, body: MigratePlanRequest, request: Request,
                       principal: Principal = Depends(require(Scope.ADMIN)),
                       container: Container = Depends(get_container)) -> PlanMigrationView:
    write = await _write(request, principal, container)
    timing = "period_end" if body.at == "period_end" else "immediate"
    sent = await run_in_threadpool(use_cases.migrate_plan, container.engine, plan_id, body.from_version,
                                   body.to_version, timing, write)
    return PlanMigrationView(plan_id=sent.plan_id, from_version=sent.from_version, to_version=sent.to_version,
                             at=body.at, commands=[MigrationCommand(subscription_id=sid, command_id=str(cid))
                                                   for sid, cid in sent.commands])


# --- coupons --------------------------------------------------------------------------------------------


@router.post("/v1/coupons", response_model=EntryView, status_code=201, responses=PROBLEM_RESPONSES,
             summary="Create a coupon (admin)")
async def create_coupon(body: CouponRequest, request: Request, principal: Principal = Depends(require(Scope.ADMIN)),
                        container: Container = Depends(get_container)) -> EntryView:
    write = await _write(request, principal, container)
    created = await run_in_threadpool(use_cases.create_coupon, container.engine, _definition(body), write)
    await _refreshed(container)
    return _entry(created)


@router.get("/v1/coupons", response_model=EntryList, responses=PROBLEM_RESPONSES, summary="Stored coupons (admin)")
async def list_coupons(_: Principal = Depends(require(Scope.ADMIN)),
                       container: Container = Depends(get_container)) -> EntryList:
    return EntryList(data=[_entry(c) for c in await run_in_threadpool(use_cases.coupons, container.engine)])


@router.post("/v1/coupons/{coupon_id}/archive", response_model=EntryView, responses=PROBLEM_RESPONSES,
             summary="Archive a coupon (admin): no new redemption, kept for what it discounted")
async def archive_coupon(coupon_id: PathId, request: Request, principal: Principal = Depends(require(Scope.ADMIN)),
                         container: Container = Depends(get_container)) -> EntryView:
    write = await _write(request, principal, container)
    archived = await run_in_threadpool(use_cases.archive_coupon, container.engine, coupon_id, write)
    await _refreshed(container)
    return _entry(archived)

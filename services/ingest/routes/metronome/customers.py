"""Metronome's customer calls: create, retrieve, list, archive, set ingest aliases, set name (and the
customer's billable metrics, in `billable_metrics`). Decode, call `service_layer.metronome_customers`,
answer Metronome's shape (`services.ingest.metronome.customers`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from services.ingest.auth import Principal, Scope, authorize_customer, require
from services.ingest.container import Container, get_container
from services.ingest.ids import PathId
from services.ingest.metronome import customers as shapes
from services.ingest.metronome.pages import after_of, limit_of, page
from services.ingest.problems import PROBLEM_RESPONSES
from services.ingest.service_layer import metronome_customers as use_cases
from services.ingest.service_layer.refusals import MetronomeRefusal
from services.ingest.service_layer.unit_of_work import UnitOfWorkFactory, sql_unit_of_work
from services.ingest.stripe_customers import StripeCustomers

router = APIRouter(tags=["metronome"])
Alias = Field(min_length=1, max_length=128)


class CreateCustomerBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    external_id: str | None = Field(default=None, min_length=1, max_length=128)
    ingest_aliases: list[str] = Field(default_factory=list, max_length=100)
    billing_config: dict[str, Any] | None = None
    custom_fields: dict[str, str] | None = None
    customer_billing_provider_configurations: list[dict[str, Any]] | None = None
    customer_revenue_system_configurations: list[dict[str, Any]] | None = None


class ArchiveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=200)


class IngestAliasesBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ingest_aliases: list[str] = Field(max_length=100)


class NameBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=10_000)


def unit_of_work(container: Container = Depends(get_container)) -> UnitOfWorkFactory:
    return sql_unit_of_work(container.engine)


def _list_param(values: list[str] | None) -> list[str] | None:
    """A list query parameter as the SDK sends it (comma-separated) or repeated."""
    if values is None:
        return None
    return [v for value in values for v in value.split(",") if v]


@router.post("/v1/customers", responses=PROBLEM_RESPONSES, summary="Metronome: create a customer")
async def create_customer(body: CreateCustomerBody, request: Request,
                          principal: Principal = Depends(require(Scope.ADMIN)),
                          container: Container = Depends(get_container),
                          uow: UnitOfWorkFactory = Depends(unit_of_work)) -> dict[str, Any]:
    if body.customer_billing_provider_configurations:
        raise shapes.not_supported("customer_billing_provider_configurations",
                                   "billing provider configurations (use billing_config with stripe)")
    if body.customer_revenue_system_configurations:
        raise shapes.not_supported("customer_revenue_system_configurations", "revenue system configurations")
    if any(not 1 <= len(a) <= 128 for a in body.ingest_aliases):
        raise MetronomeRefusal("ingest aliases are 1 to 128 characters", code="invalid",
                                      fields=[("ingest_aliases", "1 to 128 characters")])
    command = use_cases.CreateCustomer(name=body.name[:shapes.NAME_LIMIT], external_id=body.external_id,
                                       ingest_aliases=body.ingest_aliases,
                                       stripe_customer_id=shapes.stripe_customer_of(body.billing_config),
                                       custom_fields=body.custom_fields)
    record = await run_in_threadpool(use_cases.create, uow, StripeCustomers(container.stripe), command,
                                     principal=principal, request_id=request.headers.get("x-request-id"))
    request.app.state.directory.forget(*record.aliases)  # an alias usage was parked under routes from now on
    return {"data": shapes.customer_json(record)}


@router.get("/v1/customers/{customer_id}", responses=PROBLEM_RESPONSES, summary="Metronome: retrieve a customer")
async def retrieve_customer(customer_id: PathId, principal: Principal = Depends(require(Scope.READ)),
                            uow: UnitOfWorkFactory = Depends(unit_of_work)) -> dict[str, Any]:
    authorize_customer(principal, customer_id)
    record = await run_in_threadpool(use_cases.customer, uow, customer_id)
    return {"data": shapes.customer_detail_json(record)}


@router.get("/v1/customers", responses=PROBLEM_RESPONSES, summary="Metronome: list customers")
async def list_customers(customer_ids: list[str] | None = Query(None), ingest_alias: str | None = None,
                         limit: int | None = None, next_page: str | None = None, only_archived: bool = False,
                         salesforce_account_ids: list[str] | None = Query(None),
                         principal: Principal = Depends(require(Scope.READ)),
                         uow: UnitOfWorkFactory = Depends(unit_of_work)) -> dict[str, Any]:
    if salesforce_account_ids:
        raise shapes.not_supported("salesforce_account_ids", "Salesforce accounts")
    ids = _list_param(customer_ids)
    if not principal.is_admin:  # an org-bound key lists its own organisation only
        ids = [i for i in (ids if ids is not None else [principal.org_id or ""]) if i == principal.org_id]
    size = limit_of(limit)
    query = use_cases.CustomerQuery(after=after_of(next_page), limit=size, customer_ids=ids,
                                    ingest_alias=ingest_alias, only_archived=only_archived)
    records = await run_in_threadpool(use_cases.customers_page, uow, query)
    return page(records, size, lambda r: r.customer_id, shapes.customer_detail_json)


@router.post("/v1/customers/archive", responses=PROBLEM_RESPONSES, summary="Metronome: archive a customer")
async def archive_customer(body: ArchiveBody, request: Request, principal: Principal = Depends(require(Scope.ADMIN)),
                           container: Container = Depends(get_container),
                           uow: UnitOfWorkFactory = Depends(unit_of_work)) -> dict[str, Any]:
    now = await run_in_threadpool(container.clock.now)
    record = await run_in_threadpool(use_cases.archive, uow, body.id, now, principal=principal,
                                     request_id=request.headers.get("x-request-id"))
    return {"data": {"id": record.customer_id}}


@router.post("/v1/customers/{customer_id}/setIngestAliases", status_code=200, response_class=Response,
             responses=PROBLEM_RESPONSES, summary="Metronome: set a customer's ingest aliases")
async def set_ingest_aliases(customer_id: PathId, body: IngestAliasesBody, request: Request,
                             principal: Principal = Depends(require(Scope.ADMIN)),
                             uow: UnitOfWorkFactory = Depends(unit_of_work)) -> Response:
    if any(not 1 <= len(a) <= 128 for a in body.ingest_aliases):
        raise MetronomeRefusal("ingest aliases are 1 to 128 characters", code="invalid",
                                      fields=[("ingest_aliases", "1 to 128 characters")])
    _, changed = await run_in_threadpool(use_cases.set_ingest_aliases, uow, customer_id, body.ingest_aliases,
                                         principal=principal, request_id=request.headers.get("x-request-id"))
    request.app.state.directory.forget(*changed)
    return Response(status_code=200)


@router.post("/v1/customers/{customer_id}/setName", responses=PROBLEM_RESPONSES,
             summary="Metronome: set a customer's name")
async def set_name(customer_id: PathId, body: NameBody, request: Request,
                   principal: Principal = Depends(require(Scope.ADMIN)),
                   uow: UnitOfWorkFactory = Depends(unit_of_work)) -> dict[str, Any]:
    record = await run_in_threadpool(use_cases.set_name, uow, customer_id, body.name[:shapes.NAME_LIMIT],
                                     principal=principal, request_id=request.headers.get("x-request-id"))
    return {"data": shapes.customer_json(record)}

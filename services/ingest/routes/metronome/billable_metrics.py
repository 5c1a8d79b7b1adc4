"""Metronome's billable metrics (our meters): create, retrieve, list, archive, and a customer's metrics.
Decode, call `service_layer.metronome_metrics`, answer Metronome's shape
(`services.ingest.metronome.billable_metrics`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from services.ingest.auth import Principal, Scope, authorize_customer, require
from services.ingest.container import Container, get_container
from services.ingest.ids import PathId
from services.ingest.metronome import billable_metrics as shapes
from services.ingest.metronome.pages import after_of, limit_of, page
from services.ingest.problems import PROBLEM_RESPONSES
from services.ingest.service_layer import catalog as catalog_use_cases
from services.ingest.service_layer import metronome_customers, views
from services.ingest.service_layer import metronome_metrics as use_cases
from services.ingest.service_layer.unit_of_work import sql_unit_of_work
from shared.adapters.catalog_file import read_catalog_documents

router = APIRouter(tags=["metronome"])


class CreateMetricBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    aggregation_key: str | None = Field(default=None, min_length=1, max_length=100)
    aggregation_type: str | None = Field(default=None, max_length=20)
    custom_fields: dict[str, str] | None = None
    event_type_filter: dict[str, list[str]] | None = None
    group_keys: list[list[str]] | None = Field(default=None, max_length=10)
    property_filters: list[dict[str, Any]] | None = Field(default=None, max_length=50)
    sql: str | None = None


class ArchiveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=200)


async def _write(request: Request, principal: Principal, container: Container) -> catalog_use_cases.Write:
    now = await run_in_threadpool(container.clock.now)
    directory = container.settings.catalog_dir
    return catalog_use_cases.Write(principal=principal, at=now, request_id=request.headers.get("x-request-id"),
                                   bootstrap=lambda: read_catalog_documents(sorted(directory.glob("*.yaml"))))


async def _refreshed(container: Container) -> None:
    """The edge serves the new meter at once (the worker reloads its catalog on its next batch)."""
    if container.catalog_provider is not None:
        await run_in_threadpool(container.catalog_provider.refresh)


def _metric(metric: use_cases.Metric) -> dict[str, Any]:
    return shapes.metric_json(metric.id, metric.definition, metric.archived_at)


@router.post("/v1/billable-metrics/create", responses=PROBLEM_RESPONSES, summary="Metronome: create a billable metric")
async def create_metric(body: CreateMetricBody, request: Request, principal: Principal = Depends(require(Scope.ADMIN)),
                        container: Container = Depends(get_container)) -> dict[str, Any]:
    definition = shapes.meter_definition(use_cases.new_metric_id(), body.model_dump(exclude_none=True))
    write = await _write(request, principal, container)
    created = await run_in_threadpool(use_cases.create, container.engine, definition, write)
    await _refreshed(container)
    return {"data": {"id": created.id}}


@router.get("/v1/billable-metrics/{billable_metric_id}", responses=PROBLEM_RESPONSES,
            summary="Metronome: retrieve a billable metric")
async def retrieve_metric(billable_metric_id: PathId, _: Principal = Depends(require(Scope.READ)),
                          container: Container = Depends(get_container)) -> dict[str, Any]:
    found = await run_in_threadpool(use_cases.metric, container.engine, container.current_catalog(),
                                    billable_metric_id)
    return {"data": _metric(found)}


@router.get("/v1/billable-metrics", responses=PROBLEM_RESPONSES, summary="Metronome: list billable metrics")
async def list_metrics(include_archived: bool = False, limit: int | None = None, next_page: str | None = None,
                       _: Principal = Depends(require(Scope.READ)),
                       container: Container = Depends(get_container)) -> dict[str, Any]:
    size, after = limit_of(limit), after_of(next_page)
    found = await run_in_threadpool(use_cases.metrics, container.engine, container.current_catalog(),
                                    include_archived=include_archived)
    return page([m for m in found if after is None or m.id > after][:size + 1], size, lambda m: m.id, _metric)


@router.post("/v1/billable-metrics/archive", responses=PROBLEM_RESPONSES,
             summary="Metronome: archive a billable metric")
async def archive_metric(body: ArchiveBody, request: Request, principal: Principal = Depends(require(Scope.ADMIN)),
                         container: Container = Depends(get_container)) -> dict[str, Any]:
    write = await _write(request, principal, container)
    archived = await run_in_threadpool(use_cases.archive, container.engine, body.id, write)
    await _refreshed(container)
    return {"data": {"id": archived.id}}


@router.get("/v1/customers/{customer_id}/billable-metrics", responses=PROBLEM_RESPONSES,
            summary="Metronome: the billable metrics of a customer (those its plan prices)")
async def customer_metrics(customer_id: PathId, include_archived: bool = False,
                           on_current_plan: bool | None = None, limit: int | None = None,
                           next_page: str | None = None, principal: Principal = Depends(require(Scope.READ)),
                           container: Container = Depends(get_container)) -> dict[str, Any]:
    authorize_customer(principal, customer_id)
    size, after = limit_of(limit), after_of(next_page)
    await run_in_threadpool(metronome_customers.customer, sql_unit_of_work(container.engine), customer_id)
    catalog = container.current_catalog()
    subscriptions, _ = await run_in_threadpool(views.subscriptions_of, container.engine, customer_id, None, 100)
    priced = {m for s in subscriptions if s.status != "cancelled" for m in use_cases.plan_meters(catalog, s.plan_id)}
    found = await run_in_threadpool(use_cases.metrics, container.engine, catalog,
                                    include_archived=include_archived, keep=lambda m: m in priced)
    return page([m for m in found if after is None or m.id > after][:size + 1], size, lambda m: m.id, _metric)

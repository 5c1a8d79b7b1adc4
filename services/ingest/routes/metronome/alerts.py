"""Metronome's threshold notifications: `alerts.create`, `alerts.archive` and `customers.alerts.list` over our
spend and low-credit alerts (`service_layer.metronome_alerts`, shapes in `services.ingest.metronome.alerts`)."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from services.ingest.auth import Principal, Scope, authorize_customer, require
from services.ingest.container import Container, get_container
from services.ingest.metronome import alerts as shapes
from services.ingest.metronome.pages import after_of, page
from services.ingest.problems import PROBLEM_RESPONSES
from services.ingest.service_layer import metronome_alerts, metronome_customers
from services.ingest.service_layer.unit_of_work import sql_unit_of_work

router = APIRouter(tags=["metronome"])
ALERTS_PAGE = 100


class CreateAlertBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alert_type: str = Field(min_length=1, max_length=100)
    name: str = Field(min_length=1, max_length=200)
    threshold: float
    customer_id: str | None = Field(default=None, min_length=1, max_length=200)
    billable_metric_id: str | None = Field(default=None, min_length=1, max_length=200)
    credit_type_id: str | None = Field(default=None, max_length=200)
    uniqueness_key: str | None = Field(default=None, min_length=1, max_length=128)
    evaluate_on_create: bool | None = None
    plan_id: str | None = None
    access_type: str | None = None
    alert_specifiers: list[dict[str, Any]] | None = None
    credit_grant_type_filters: list[str] | None = None
    custom_field_filters: list[dict[str, Any]] | None = None
    group_values: list[dict[str, Any]] | None = None
    invoice_types_filter: list[str] | None = None
    seat_filter: dict[str, Any] | None = None


class ArchiveAlertBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=200)
    release_uniqueness_key: bool = False


class ListAlertsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer_id: str = Field(min_length=1, max_length=200)
    alert_statuses: list[str] | None = Field(default=None, max_length=3)


@router.post("/v1/alerts/create", responses=PROBLEM_RESPONSES,
             summary="Metronome: create a threshold notification (spend or low credit) for a customer")
async def create_alert(body: CreateAlertBody, request: Request, principal: Principal = Depends(require(Scope.ADMIN)),
                       container: Container = Depends(get_container)) -> dict[str, Any]:
    wanted = shapes.new_alert(body.model_dump(exclude_none=True))
    await run_in_threadpool(metronome_customers.customer, sql_unit_of_work(container.engine), wanted.customer_id)
    alert_id = await run_in_threadpool(partial(
        metronome_alerts.create, container.engine, container.current_catalog(), wanted, principal=principal,
        request_id=request.headers.get("x-request-id")))
    return {"data": {"id": alert_id}}


@router.post("/v1/alerts/archive", responses=PROBLEM_RESPONSES, summary="Metronome: archive a threshold notification")
async def archive_alert(body: ArchiveAlertBody, request: Request, principal: Principal = Depends(require(Scope.ADMIN)),
                        container: Container = Depends(get_container)) -> dict[str, Any]:
    alert_id = await run_in_threadpool(partial(
        metronome_alerts.archive, container.engine, body.id, body.release_uniqueness_key, principal=principal,
        authorize=partial(authorize_customer, principal), request_id=request.headers.get("x-request-id")))
    return {"data": {"id": alert_id}}


@router.post("/v1/customer-alerts/list", responses=PROBLEM_RESPONSES,
             summary="Metronome: a customer's threshold notifications and whether each is in alarm")
async def list_alerts(body: ListAlertsBody, next_page: str | None = None,
                      principal: Principal = Depends(require(Scope.READ)),
                      container: Container = Depends(get_container)) -> dict[str, Any]:
    authorize_customer(principal, body.customer_id)
    after = after_of(next_page)
    await run_in_threadpool(metronome_customers.customer, sql_unit_of_work(container.engine), body.customer_id)
    found = await run_in_threadpool(metronome_alerts.alerts_of, container.engine, body.customer_id,
                                    shapes.statuses_of(body.alert_statuses))
    return page([a for a in found if after is None or a.alert_id > after][:ALERTS_PAGE + 1], ALERTS_PAGE,
                lambda a: a.alert_id, shapes.customer_alert_json)

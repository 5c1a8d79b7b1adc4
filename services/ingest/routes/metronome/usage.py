"""Metronome's usage calls: `POST /v1/ingest` (the native ingest use case: it already takes Metronome's body;
an event's `customer_id` may be a customer id or one of its ingest aliases), `POST /v1/usage` (aggregated per
billable metric and window) and `POST /v1/usage/groups` (one metric of one customer, grouped by its group
key), both read from our materialised usage (`service_layer.metronome_usage`, shapes in
`services.ingest.metronome.usage`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from services.ingest.auth import Principal, Scope, authorize_customer, require
from services.ingest.container import Container, get_container
from services.ingest.metronome import usage as shapes
from services.ingest.metronome.pages import after_of, limit_of, page
from services.ingest.problems import PROBLEM_RESPONSES
from services.ingest.routes import ingest as native_ingest
from services.ingest.service_layer import metronome_customers, metronome_metrics, metronome_usage, views
from services.ingest.service_layer.refusals import MetronomeRefusal
from services.ingest.service_layer.unit_of_work import sql_unit_of_work

router = APIRouter(tags=["metronome"])
_BATCH_SCHEMA = {"type": "array", "minItems": 1, "maxItems": 1000,
                 "items": {"$ref": "#/components/schemas/UsageEvent"}}
USAGE_PAGE = 100  # rows per page of `usage.list` (the SDK sends no limit)
_SEP = "\x01"  # joins a row's sort key: below every character of an id, so the text sorts as the tuple

router.add_api_route("/v1/ingest", native_ingest.ingest, methods=["POST"], response_model=native_ingest.IngestResult,
                     responses=PROBLEM_RESPONSES, summary="Metronome: ingest usage events (1..1000)",
                     operation_id="metronome_ingest",
                     openapi_extra={"requestBody": {"required": True, "content": {
                         "application/json": {"schema": _BATCH_SCHEMA}}}})

Window = Literal["HOUR", "DAY", "NONE"]


class GroupBy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str = Field(min_length=1, max_length=100)
    values: list[str] | None = Field(default=None, max_length=200)


class MetricQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=200)
    group_by: GroupBy | None = None


class UsageListBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    starting_on: datetime
    ending_before: datetime
    window_size: Window
    billable_metrics: list[MetricQuery] | None = Field(default=None, max_length=100)
    customer_ids: list[str] | None = Field(default=None, max_length=100)


class UsageGroupsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    billable_metric_id: str = Field(min_length=1, max_length=200)
    customer_id: str = Field(min_length=1, max_length=200)
    window_size: Window
    current_period: bool | None = None
    starting_on: datetime | None = None
    ending_before: datetime | None = None
    group_by: GroupBy | None = None
    group_key: list[str] | None = Field(default=None, max_length=10)
    group_filters: dict[str, list[str]] | None = None


def _customers_of(principal: Principal, asked: list[str] | None) -> list[str] | None:
    """The customers a query may read: an org-bound key reads its own organisation only."""
    if principal.is_admin or principal.org_id is None:
        return asked
    for customer_id in asked or ():
        authorize_customer(principal, customer_id)
    return asked if asked is not None else [principal.org_id]


@router.post("/v1/usage", responses=PROBLEM_RESPONSES,
             summary="Metronome: usage per customer, billable metric and window (HOUR, DAY, NONE)")
async def list_usage(body: UsageListBody, next_page: str | None = None,
                     principal: Principal = Depends(require(Scope.READ)),
                     container: Container = Depends(get_container)) -> dict[str, Any]:
    shapes.check_bounds(body.starting_on, body.ending_before)
    spans = shapes.windows(body.starting_on, body.ending_before, body.window_size)
    after = after_of(next_page)
    customer_ids = _customers_of(principal, body.customer_ids)
    metrics = {m.id: m for m in await run_in_threadpool(metronome_metrics.metrics, container.engine,
                                                          container.current_catalog(), include_archived=True)}
    asked = body.billable_metrics
    group_keys: dict[str, tuple[str, list[str] | None]] = {}
    for index, query in enumerate(asked or ()):
        if query.id not in metrics:
            raise MetronomeRefusal(f"no billable metric {query.id!r}", code="not_found",
                                   fields=[(f"billable_metrics.{index}.id", "unknown billable metric")])
        if query.group_by is not None:
            grouped, wanted = shapes.group_key_of(metrics[query.id].definition.get("dimension"), None,
                                                  query.group_by.model_dump(exclude_none=True))
            group_keys[query.id] = (str(grouped), list(wanted) if wanted is not None else None)
    totals = await run_in_threadpool(
        metronome_usage.hour_totals, container.engine, starting_on=body.starting_on,
        ending_before=body.ending_before, customer_ids=customer_ids,
        metric_ids=[q.id for q in asked] if asked is not None else None)
    pairs = [(c, q.id) for c in customer_ids for q in asked] if customer_ids and asked else []
    names = {i: str(m.definition.get("name", i)) for i, m in metrics.items()}
    rows = shapes.list_rows(totals, spans, names, group_keys, pairs)

    def row_key(row: dict[str, Any]) -> str:
        return _SEP.join((row["customer_id"], row["billable_metric_id"], row["start_timestamp"]))
    return page([r for r in rows if after is None or row_key(r) > after][:USAGE_PAGE + 1], USAGE_PAGE, row_key,
                dict)


@router.post("/v1/usage/groups", responses=PROBLEM_RESPONSES,
             summary="Metronome: one customer's usage of one billable metric per window, grouped by its group key")
async def list_usage_with_groups(body: UsageGroupsBody, limit: int | None = None, next_page: str | None = None,
                                 principal: Principal = Depends(require(Scope.READ)),
                                 container: Container = Depends(get_container)) -> dict[str, Any]:
    authorize_customer(principal, body.customer_id)
    size, after = limit_of(limit), after_of(next_page)
    await run_in_threadpool(metronome_customers.customer, sql_unit_of_work(container.engine), body.customer_id)
    metric = await run_in_threadpool(metronome_metrics.metric, container.engine, container.current_catalog(),
                                     body.billable_metric_id)
    key, values = shapes.group_key_of(metric.definition.get("dimension"), body.group_key,
                                      body.group_by.model_dump(exclude_none=True) if body.group_by else None)
    for filtered, wanted in (body.group_filters or {}).items():
        if filtered != key:
            raise MetronomeRefusal("group_filters keys must be in group_key", code="invalid",
                                   fields=[(f"group_filters.{filtered}", "not the group key")])
        values = wanted or values
    starting_on, ending_before = await _bounds(body, container)
    spans = shapes.windows(starting_on, ending_before, body.window_size)
    totals = await run_in_threadpool(metronome_usage.hour_totals, container.engine, starting_on=starting_on,
                                     ending_before=ending_before, customer_ids=[body.customer_id],
                                     metric_ids=[metric.id])
    rows = shapes.group_rows(totals, spans, key, values)

    def row_key(row: dict[str, Any]) -> str:
        return _SEP.join((row["starting_on"], row["group_value"] or ""))
    return page([r for r in rows if after is None or row_key(r) > after][:size + 1], size, row_key, dict)


async def _bounds(body: UsageGroupsBody, container: Container) -> tuple[datetime, datetime]:
    """The query's span: the given UTC-midnight bounds, or the customer's current billing period."""
    if body.current_period:
        if body.starting_on is not None or body.ending_before is not None:
            raise MetronomeRefusal("current_period excludes starting_on and ending_before", code="invalid",
                                   fields=[("current_period", "given with bounds")])
        found, _ = await run_in_threadpool(views.subscriptions_of, container.engine, body.customer_id, None, 100)
        live = sorted((s for s in found if s.status != "cancelled"), key=lambda s: s.created_at)
        if not live:
            raise MetronomeRefusal("the customer has no live subscription", code="invalid",
                                   fields=[("current_period", "no current billing period")])
        return live[-1].current_period_start, live[-1].current_period_end
    if body.starting_on is None or body.ending_before is None:
        raise MetronomeRefusal("starting_on and ending_before are required without current_period", code="invalid",
                               fields=[("starting_on", "required")])
    shapes.check_bounds(body.starting_on, body.ending_before)
    return body.starting_on, body.ending_before

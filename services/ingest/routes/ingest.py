"""`POST /v1/ingest`: usage events in Metronome's shape, 1..1000 per request, one result per event.

Accepted events are acknowledged only after Kafka acknowledged them (acks=all, idempotent producer) on
`usage.v1`, keyed by subscription_id. The envelope's event_id derives from (customer, transaction_id), so a
re-sent batch carries the same ids and the worker's dedupe on (customer, transaction_id) drops repeats.
Which events are accepted, parked (unknown customers), refused or duplicates is decided by the usage intake
use case (`services.ingest.service_layer.usage_intake`); these routes decode, call it and encode.
Org-bound keys cannot park: their events must name their own organisation (403 otherwise).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from services.ingest.auth import Principal, Scope, authorize_customer, forbidden, require
from services.ingest.container import Container, get_container
from services.ingest.directory import CustomerDirectory
from services.ingest.pagination import Page, decode_int_cursor, encode_cursor
from services.ingest.problems import PROBLEM_RESPONSES, FieldError, ProblemError, field_errors_of
from services.ingest.quota_spend import check_spend
from services.ingest.service_layer import usage_intake
from services.ingest.service_layer.unit_of_work import sql_unit_of_work
from services.ingest.service_layer.usage_intake import EventStatus, FieldProblem
from shared.contracts import topics
from shared.errors import DeliveryError
from shared.sdk.events import EventWindow, UsageEvent, ValidEvent, check_event, fast_event, utc_text

router = APIRouter(tags=["usage"])


class EventResult(BaseModel):
    index: int
    transaction_id: str | None = None
    status: EventStatus = Field(description="accepted | rejected | parked | duplicate (an earlier event of the same "
                                            "request has this customer and transaction_id; it is not sent again)")
    reason: str | None = Field(default=None, description="a stable code, e.g. timestamp_too_old")
    errors: list[FieldError] = Field(default_factory=list)


class IngestResult(BaseModel):
    accepted: int
    rejected: int
    parked: int
    duplicates: int = 0
    results: list[EventResult]


async def directory_of(request: Request) -> CustomerDirectory:
    """The app's customer directory (built by the composition root; async: no thread hop per request)."""
    directory: CustomerDirectory = request.app.state.directory
    return directory


def _result(index: int, transaction_id: str | None, status: str, reason: str | None = None,
            errors: Sequence[FieldProblem] = ()) -> dict[str, Any]:
    """One event's result, shaped as `EventResult` (plain dicts on the hot path, written with orjson)."""
    return {"index": index, "transaction_id": transaction_id, "status": status, "reason": reason,
            "errors": [{"field": e.field, "reason": e.reason} for e in errors]}


def _parse_batch(raw: bytes, max_events: int) -> list[Any]:
    try:
        items = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProblemError(400, "Malformed JSON", "the body is not valid JSON", slug="malformed-json") from exc
    if not isinstance(items, list):
        raise ProblemError(422, "Request validation failed", "the body must be a JSON array of events",
                           slug="validation", errors=[FieldError(field="body", reason="expected an array")])
    if not 1 <= len(items) <= max_events:
        raise ProblemError(422, "Batch size out of range", f"send 1 to {max_events} events per request",
                           slug="batch-size", errors=[FieldError(field="body",
                                                                 reason=f"{len(items)} events; 1..{max_events}")])
    return items


_BATCH_SCHEMA = {"type": "array", "minItems": 1, "maxItems": 1000,
                 "items": {"$ref": "#/components/schemas/UsageEvent"}}

_ACCEPTED, _REJECTED, _PARKED, _DUPLICATE = (EventStatus.ACCEPTED.value, EventStatus.REJECTED.value,
                                             EventStatus.PARKED.value, EventStatus.DUPLICATE.value)


@router.post("/v1/ingest", response_model=IngestResult, responses=PROBLEM_RESPONSES,
             summary="Ingest usage events (1..1000, Metronome's shape)",
             openapi_extra={"requestBody": {"required": True,
                                            "content": {"application/json": {"schema": _BATCH_SCHEMA}}}})
async def ingest(request: Request, principal: Principal = Depends(require(Scope.INGEST)),
                 container: Container = Depends(get_container),
                 directory: CustomerDirectory = Depends(directory_of)) -> Response:
    # NOTE: hot path. The body is parsed once with orjson; each event is checked with UsageEvent's rules
    # (`fast_event` for the common exact shape, UsageEvent itself otherwise, for its precise errors);
    # results are plain dicts written with orjson; accepted events become JSON bytes handed to librdkafka
    # in one call per request, and the answer waits for every acknowledgement.
    items = _parse_batch(await request.body(), container.settings.max_batch_events)
    now = await run_in_threadpool(container.clock.now)
    window = EventWindow.at(now)
    results: list[dict[str, Any] | None] = [None] * len(items)
    valid: list[tuple[int, ValidEvent]] = []
    for index, item in enumerate(items):
        event = fast_event(item)
        if event is None:
            try:
                event = ValidEvent.of(UsageEvent.model_validate(item))
            except ValidationError as exc:
                tx = item.get("transaction_id") if isinstance(item, dict) else None
                results[index] = _result(index, tx if isinstance(tx, str) else None, _REJECTED, "invalid_event",
                                         field_errors_of(exc.errors()))
                continue
        problem = check_event(event, window)
        if problem is not None:
            results[index] = _result(index, event.transaction_id, _REJECTED, problem.code, (problem,))
            continue
        valid.append((index, event))

    routes = await run_in_threadpool(directory.resolve, {e.customer_id for _, e in valid}) if valid else {}
    if not principal.is_admin and principal.org_id is not None:
        for _, event in valid:
            if routes[event.customer_id].customer_id != principal.org_id:
                raise forbidden("an event names a customer outside this API key's organisation")
    for route in {r.customer_id: r for r in routes.values() if r.customer_id is not None}.values():
        authorize_customer(principal, route.customer_id or "")

    spend = await check_spend(request, routes, now)  # usage tiers: free tier / spend caps (issue 7)
    intake = usage_intake.sort_events(valid, routes, container.current_catalog(), spend, received_at_utc=utc_text(now),
                                      correlation_id=request.headers.get("x-request-id"))
    if intake.parked:
        await run_in_threadpool(usage_intake.park, sql_unit_of_work(container.engine),
                                [e for _, e in intake.parked], principal.key_id)
    started = time.perf_counter()
    try:
        await container.usage_producer.send(container.settings.topic(topics.USAGE), intake.usage)
    except DeliveryError:
        request.app.state.metrics.usage_events.labels("failed", "kafka_unavailable").inc(len(intake.accepted))
        raise
    request.app.state.metrics.produce_seconds.labels(topics.USAGE).observe(time.perf_counter() - started)

    for index, tx in intake.accepted:
        results[index] = {"index": index, "transaction_id": tx, "status": _ACCEPTED, "reason": None, "errors": []}
    for index, event in intake.parked:
        results[index] = _result(index, event.transaction_id, _PARKED, "unknown_customer")
    for index, tx in intake.duplicates:
        results[index] = _result(index, tx, _DUPLICATE, "duplicate_in_request")
    for index, tx, code, why in intake.rejected:
        results[index] = _result(index, tx, _REJECTED, code, (why,))
    accepted, parked, duplicates = len(intake.accepted), len(intake.parked), len(intake.duplicates)
    rejected = len(items) - accepted - parked - duplicates
    counter = request.app.state.metrics.usage_events
    counter.labels(_ACCEPTED, "").inc(accepted)
    if parked:
        counter.labels(_PARKED, "unknown_customer").inc(parked)
    if duplicates:
        counter.labels(_DUPLICATE, "duplicate_in_request").inc(duplicates)
    if rejected:
        reasons: dict[str, int] = {}
        for r in results:
            if r is not None and r["status"] == _REJECTED:
                reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
        for reason, count in reasons.items():
            counter.labels(_REJECTED, reason).inc(count)
    return Response(orjson.dumps({"accepted": accepted, "rejected": rejected, "parked": parked,
                                  "duplicates": duplicates, "results": results}),
                    media_type="application/json")


# ------------------------------------------------------------------------------------ unmatched usage


class UnmatchedEvent(BaseModel):
    id: int
    customer_ref: str
    transaction_id: str
    event: dict[str, Any]
    submitted_by: str
    created_at: datetime
    replayed_at: datetime | None


class ReplayRequest(BaseModel):
    customer_ref: str = Field(min_length=1, description="the id the producer used (now a customer id or alias)")


@router.get("/v1/usage/unmatched", response_model=Page[UnmatchedEvent], responses=PROBLEM_RESPONSES,
            summary="Usage parked because its customer was unknown (admin)")
async def list_unmatched(customer_ref: str | None = None, include_replayed: bool = False,
                         limit: int = Query(50, ge=1, le=500), cursor: str | None = None,
                         _: Principal = Depends(require(Scope.ADMIN)),
                         container: Container = Depends(get_container)) -> Page[UnmatchedEvent]:
    after = decode_int_cursor(cursor)
    rows = await run_in_threadpool(usage_intake.unmatched_page, sql_unit_of_work(container.engine),
                                   customer_ref=customer_ref, include_replayed=include_replayed, after=after,
                                   limit=limit + 1)
    items = [UnmatchedEvent.model_validate(r) for r in rows[:limit]]
    return Page(data=items, next_cursor=encode_cursor(str(items[-1].id)) if len(rows) > limit else None)


class ReplayResult(BaseModel):
    replayed: int
    still_rejected: list[EventResult]


@router.post("/v1/usage/unmatched/replay", response_model=ReplayResult, responses=PROBLEM_RESPONSES,
             summary="Replay parked usage of a customer that now exists (admin)")
async def replay_unmatched(body: ReplayRequest, request: Request, _: Principal = Depends(require(Scope.ADMIN)),
                           container: Container = Depends(get_container),
                           directory: CustomerDirectory = Depends(directory_of)) -> ReplayResult:
    directory.forget(body.customer_ref)
    route = (await run_in_threadpool(directory.resolve, [body.customer_ref]))[body.customer_ref]
    now = await run_in_threadpool(container.clock.now)
    replay = await run_in_threadpool(usage_intake.replay_unmatched, sql_unit_of_work(container.engine),
                                     container.current_catalog(), route, body.customer_ref, now,
                                     request.headers.get("x-request-id"))  # refusals: 409 (problem layer)
    return ReplayResult(replayed=replay.replayed, still_rejected=[
        EventResult(index=row_id, transaction_id=tx, status=EventStatus.REJECTED, reason=why.code,
                    errors=[FieldError(field=why.field, reason=why.reason)])
        for row_id, tx, why in replay.still_rejected])

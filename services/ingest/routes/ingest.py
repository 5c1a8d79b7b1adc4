"""`POST /v1/ingest`: usage events in Metronome's shape, 1..1000 per request, one result per event.

Accepted events are acknowledged only after Kafka acknowledged them (acks=all, idempotent producer) on
`usage.v1`, keyed by subscription_id. The envelope's event_id derives from (customer, transaction_id), so a
re-sent batch carries the same ids and the worker's dedupe on (customer, transaction_id) drops repeats.

Unknown customers: # NOTE: events whose customer_id is neither a customer id nor an alias are *parked*, not
refused: they are stored in `unmatched_usage` (and copied to `usage.unmatched.v1` for stream consumers),
listed by `GET /v1/usage/unmatched` and replayed by `POST /v1/usage/unmatched/replay` once the customer
exists. A producer racing onboarding therefore loses nothing. Org-bound keys cannot park: their events must
name their own organisation (403 otherwise).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import orjson
import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.dialects.postgresql import insert
from starlette.concurrency import run_in_threadpool

from services.ingest.auth import Principal, Scope, authorize_customer, forbidden, require
from services.ingest.container import Container, get_container
from services.ingest.directory import USAGE_STATUSES, CustomerDirectory, Route
from services.ingest.pagination import Page, decode_int_cursor, encode_cursor
from services.ingest.problems import PROBLEM_RESPONSES, FieldError, ProblemError, field_errors_of
from services.ingest.quota_spend import check_spend
from shared.adapters.kafka.producer import OutgoingMessage
from shared.adapters.postgres.schema.edge import unmatched_usage
from shared.contracts import topics
from shared.domain.catalog import Aggregation, Catalog
from shared.errors import DeliveryError
from shared.sdk.envelopes import usage_message, usage_value
from shared.sdk.events import EventWindow, UsageEvent, ValidEvent, check_event, fast_event, numeric_value, utc_text
from shared.sdk.kafka import KafkaMessage

router = APIRouter(tags=["usage"])


class EventResult(BaseModel):
    index: int
    transaction_id: str | None = None
    status: str = Field(description="accepted | rejected | parked | duplicate (an earlier event of the same "
                                    "request has this customer and transaction_id; it is not sent again)")
    reason: str | None = Field(default=None, description="a stable code, e.g. timestamp_too_old")
    errors: list[FieldError] = Field(default_factory=list)


class IngestResult(BaseModel):
    accepted: int
    rejected: int
    parked: int
    duplicates: int = 0
    results: list[EventResult]


def directory_of(request: Request, container: Container = Depends(get_container)) -> CustomerDirectory:
    directory: CustomerDirectory | None = getattr(request.app.state, "directory", None)
    if directory is None:
        directory = CustomerDirectory(container.engine)
        request.app.state.directory = directory
    return directory


@dataclass(frozen=True)
class _Metering:
    """What a plan needs of one event type: the properties that must hold a number, with their meter."""

    numeric_properties: tuple[tuple[str, str], ...]  # (property, meter id)


_Meters = dict[tuple[str | None, str], _Metering | None]  # None: the plan meters nothing of this type
_UNKNOWN_PLAN: Final = _Metering(())


def _metering(catalog: Catalog, plan_id: str | None, event_type: str) -> _Metering | None:
    plan = catalog.plans.get(plan_id) if plan_id else None  # type: ignore[call-overload]
    if plan is None:
        return _UNKNOWN_PLAN
    meters = [catalog.meters[m] for m in plan.meters if catalog.meters[m].event_type == event_type]
    if not meters:
        return None
    return _Metering(tuple((m.value_property, m.id) for m in meters
                           if m.aggregation is Aggregation.SUM and m.value_property))


def _plan_problem(catalog: Catalog, route: Route, event: UsageEvent | ValidEvent,
                  memo: _Meters | None = None) -> tuple[str, FieldError] | None:
    """Is the event type metered by the customer's plan, with the numeric value its meters sum?
    `memo` caches the metering per (plan, event type) for the length of one request."""
    key = (route.plan_id, event.event_type)
    if memo is None:
        metering = _metering(catalog, *key)
    else:
        metering = memo[key] if key in memo else memo.setdefault(key, _metering(catalog, *key))
    if metering is _UNKNOWN_PLAN:
        return "unknown_plan", FieldError(field="customer_id", reason="the subscription's plan is not in the catalog")
    if metering is None:
        return "unknown_event_type", FieldError(
            field="event_type", reason=f"plan {route.plan_id} meters no event type {event.event_type!r}")
    for name, meter_id in metering.numeric_properties:
        value = event.properties.get(name)
        if type(value) is not int and numeric_value(value) is None:  # ints: the common case, no Decimal
            return "missing_property", FieldError(
                field=f"properties.{name}", reason=f"meter {meter_id} needs a number here")
    return None


def _result(index: int, transaction_id: str | None, status: str, reason: str | None = None,
            errors: list[FieldError] | None = None) -> dict[str, Any]:
    """One event's result, shaped as `EventResult` (plain dicts on the hot path, written with orjson)."""
    return {"index": index, "transaction_id": transaction_id, "status": status, "reason": reason,
            "errors": [{"field": e.field, "reason": e.reason} for e in errors or ()]}


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
    reasons: dict[str, int] = {}
    valid: list[tuple[int, ValidEvent]] = []
    for index, item in enumerate(items):
        event = fast_event(item)
        if event is None:
            try:
                event = ValidEvent.of(UsageEvent.model_validate(item))
            except ValidationError as exc:
                tx = item.get("transaction_id") if isinstance(item, dict) else None
                results[index] = _result(index, tx if isinstance(tx, str) else None, "rejected", "invalid_event",
                                         field_errors_of(exc.errors()))
                continue
        problem = check_event(event, window)
        if problem is not None:
            results[index] = _result(index, event.transaction_id, "rejected", problem.code,
                                     [FieldError(field=problem.field, reason=problem.reason)])
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
    correlation = request.headers.get("x-request-id")
    received_at = utc_text(now)
    keys: dict[str, bytes] = {}
    usage: list[KafkaMessage] = []
    accepted: list[tuple[int, str]] = []
    parked: list[tuple[int, ValidEvent]] = []
    duplicates: list[tuple[int, str]] = []
    # (customer, transaction_id) of the events this request accepts or parks (the worker's dedupe key; the
    # producer's id for a parked one, unknown by definition): a repeat in the same request is reported
    # `duplicate` instead of `accepted` twice, and only the first is sent.
    taken: set[tuple[str, str]] = set()
    meters_memo: _Meters = {}
    for index, event in valid:
        route = routes[event.customer_id]
        customer_id, subscription_id = route.customer_id, route.subscription_id
        dedupe_key = (customer_id or event.customer_id, event.transaction_id)
        if dedupe_key in taken:
            duplicates.append((index, event.transaction_id))
            continue
        if customer_id is None:
            parked.append((index, event))
            taken.add(dedupe_key)
            continue
        if subscription_id is None or route.status not in USAGE_STATUSES:
            reason = "subscription_paused" if route.status == "paused" else "no_active_subscription"
            results[index] = _result(index, event.transaction_id, "rejected", reason, [FieldError(
                field="customer_id", reason="the customer has no subscription that accepts usage")])
            continue
        plan_problem = _plan_problem(container.catalog, route, event, meters_memo) or spend.refuse(route, event)
        if plan_problem is not None:
            results[index] = _result(index, event.transaction_id, "rejected", plan_problem[0], [plan_problem[1]])
            continue
        key = keys.get(subscription_id)
        if key is None:
            key = keys[subscription_id] = subscription_id.encode()
        usage.append({"key": key, "value": usage_value(
            event, customer_id=customer_id, subscription_id=subscription_id, received_at_utc=received_at,
            producer="ingest", correlation_id=correlation)})
        accepted.append((index, event.transaction_id))
        taken.add(dedupe_key)

    if parked:
        await run_in_threadpool(_park, container.engine, parked, principal.key_id)
    started = time.perf_counter()
    try:
        if parked:
            await container.producer.send_async([
                OutgoingMessage(topics.USAGE_UNMATCHED, e.customer_id, orjson.dumps(e.as_json()),
                                (("type", b"usage.unmatched"),)) for _, e in parked])
        await container.usage_producer.send(container.settings.topic(topics.USAGE), usage)
    except DeliveryError:
        request.app.state.metrics.usage_events.labels("failed", "kafka_unavailable").inc(len(accepted))
        raise
    request.app.state.metrics.produce_seconds.labels(topics.USAGE).observe(time.perf_counter() - started)

    for index, tx in accepted:
        results[index] = {"index": index, "transaction_id": tx, "status": "accepted", "reason": None, "errors": []}
    for index, event in parked:
        results[index] = _result(index, event.transaction_id, "parked", "unknown_customer")
    for index, tx in duplicates:
        results[index] = _result(index, tx, "duplicate", "duplicate_in_request")
    rejected = len(items) - len(accepted) - len(parked) - len(duplicates)
    counter = request.app.state.metrics.usage_events
    counter.labels("accepted", "").inc(len(accepted))
    if parked:
        counter.labels("parked", "unknown_customer").inc(len(parked))
    if duplicates:
        counter.labels("duplicate", "duplicate_in_request").inc(len(duplicates))
    if rejected:
        for r in results:
            if r is not None and r["status"] == "rejected":
                reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
        for reason, count in reasons.items():
            counter.labels("rejected", reason).inc(count)
    return Response(orjson.dumps({"accepted": len(accepted), "rejected": rejected, "parked": len(parked),
                                  "duplicates": len(duplicates), "results": results}),
                    media_type="application/json")


def _park(engine: sa.Engine, parked: list[tuple[int, ValidEvent]], key_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(insert(unmatched_usage).on_conflict_do_nothing(), [
            {"customer_ref": e.customer_id, "transaction_id": e.transaction_id,
             "event": e.as_json(), "submitted_by": key_id} for _, e in parked])


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

    def load() -> list[sa.Row[Any]]:
        query = sa.select(unmatched_usage).order_by(unmatched_usage.c.id).limit(limit + 1)
        if after is not None:
            query = query.where(unmatched_usage.c.id > after)
        if customer_ref is not None:
            query = query.where(unmatched_usage.c.customer_ref == customer_ref)
        if not include_replayed:
            query = query.where(unmatched_usage.c.replayed_at.is_(None))
        with container.engine.connect() as conn:
            return list(conn.execute(query))

    rows = await run_in_threadpool(load)
    items = [UnmatchedEvent.model_validate(r._mapping) for r in rows[:limit]]
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
    if route.customer_id is None:
        raise ProblemError(409, "Customer still unknown", f"no customer or alias {body.customer_ref!r} yet",
                           slug="customer-unknown")
    if route.subscription_id is None or route.status not in USAGE_STATUSES:
        raise ProblemError(409, "No subscription accepts usage", "subscribe the customer first",
                           slug="no-active-subscription")

    def load() -> list[sa.Row[Any]]:
        with container.engine.connect() as conn:
            return list(conn.execute(sa.select(unmatched_usage).where(
                unmatched_usage.c.customer_ref == body.customer_ref, unmatched_usage.c.replayed_at.is_(None))
                .order_by(unmatched_usage.c.id)))

    rows = await run_in_threadpool(load)
    now = await run_in_threadpool(container.clock.now)
    window = EventWindow.at(now)
    messages: list[OutgoingMessage] = []
    rejected: list[EventResult] = []
    for row in rows:
        event = UsageEvent.model_validate(row.event)
        # NOTE: a replay is a reception at `now`, and the worker holds every usage message to the window at
        # its received_at (shared.contracts.usage_rules): an event parked more than 34 days ago is refused
        # here (timestamp_too_old, as its period is invoiced) rather than sent and dead-lettered.
        rule = check_event(event, window)
        problem = ((rule.code, FieldError(field=rule.field, reason=rule.reason)) if rule is not None
                   else _plan_problem(container.catalog, route, event))
        if problem is not None:
            rejected.append(EventResult(index=row.id, transaction_id=event.transaction_id, status="rejected",
                                        reason=problem[0], errors=[problem[1]]))
            continue
        messages.append(usage_message(event, customer_id=route.customer_id, subscription_id=route.subscription_id,
                                      received_at=now, producer="ingest.replay",
                                      correlation_id=request.headers.get("x-request-id")))
    await container.producer.send_async(messages)

    def mark() -> None:
        with container.engine.begin() as conn:
            conn.execute(sa.update(unmatched_usage).where(unmatched_usage.c.id.in_([r.id for r in rows]))
                         .values(replayed_at=sa.func.now()))

    await run_in_threadpool(mark)
    return ReplayResult(replayed=len(messages), still_rejected=rejected)


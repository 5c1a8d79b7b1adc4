"""Usage intake: which events of a batch are accepted, parked, refused or duplicates, and why.

- An event whose customer reference is neither a customer id nor an alias is *parked* (# NOTE: not refused:
  a producer racing onboarding must not lose revenue): stored in `unmatched_usage`, copied to
  `usage.unmatched.v1` through the outbox in the same transaction, and replayed once the customer exists.
- An event of a customer whose newest live subscription does not accept usage (paused, none) is refused.
- An event type the plan does not meter, or without the number a summing meter needs, is refused.
- The spend gate (usage tiers: free tier, spend caps) may refuse an event that would pass its org's limit.
- A repeat of (customer, transaction_id) inside one request is a `duplicate`, sent once.
Accepted events become `usage.recorded` messages keyed by subscription_id; the route sends them and answers
only after Kafka acknowledged them (usage has no PostgreSQL row to keep in step with, so no outbox).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Final, Protocol

import orjson

from services.ingest.directory import Route
from services.ingest.service_layer.refusals import CustomerStillUnknown, NoSubscriptionAcceptsUsage
from services.ingest.service_layer.unit_of_work import UnitOfWorkFactory
from shared.contracts import topics
from shared.contracts.usage_rules import UsageProblem
from shared.domain.catalog import Aggregation, Catalog
from shared.domain.subscription import SubscriptionStatus
from shared.sdk.envelopes import usage_message, usage_value
from shared.sdk.events import EventWindow, UsageEvent, ValidEvent, check_event, numeric_value
from shared.sdk.kafka import KafkaMessage

PRODUCER: Final = "ingest"
REPLAY_PRODUCER: Final = "ingest.replay"
UNMATCHED_TYPE: Final = "usage.unmatched"
_UNMATCHED_NAMESPACE: Final = uuid.UUID("3c9d4f0e-8a51-4b2f-9e67-0d1c2b3a4f5e")

#: NOTE: usage is billed to subscriptions in these statuses; a paused one bills no usage (its events are
#: refused, `subscription_paused`), a cancelled one is not live at all.
ACCEPTS_USAGE: Final = frozenset({SubscriptionStatus.TRIALING, SubscriptionStatus.ACTIVE,
                                  SubscriptionStatus.PAST_DUE})


class EventStatus(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    PARKED = "parked"
    DUPLICATE = "duplicate"  # an earlier event of the same request has this customer and transaction_id


class FieldProblem(Protocol):
    """The input at fault and why (a `UsageProblem`, or the spend gate's field error)."""

    @property
    def field(self) -> str: ...

    @property
    def reason(self) -> str: ...


class SpendVerdicts(Protocol):
    """The spend gate's answers for one batch: (reason, field problem) for an event over its org's limit."""

    def refuse(self, route: Route, event: Any) -> tuple[str, FieldProblem] | None: ...


def accepts_usage(route: Route) -> bool:
    return route.subscription_id is not None and route.status in ACCEPTS_USAGE


def _no_subscription(route: Route) -> UsageProblem:
    return UsageProblem(field="customer_id", reason="the customer has no subscription that accepts usage",
                        code="subscription_paused" if route.status == SubscriptionStatus.PAUSED
                        else "no_active_subscription")


# --- plan metering ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Metering:
    """What a plan needs of one event type: the properties that must hold a number, with their meter."""

    numeric_properties: tuple[tuple[str, str], ...]  # (property, meter id)


Meters = dict[tuple[str | None, str], _Metering | None]  # per (plan, event type); None: not metered
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


def plan_problem(catalog: Catalog, route: Route, event: UsageEvent | ValidEvent,
                 memo: Meters | None = None) -> UsageProblem | None:
    """Is the event type metered by the customer's plan, with the numeric value its meters sum?
    `memo` caches the metering per (plan, event type) for the length of one request."""
    key = (route.plan_id, event.event_type)
    if memo is None:
        metering = _metering(catalog, *key)
    else:
        metering = memo[key] if key in memo else memo.setdefault(key, _metering(catalog, *key))
    if metering is _UNKNOWN_PLAN:
        return UsageProblem("customer_id", "the subscription's plan is not in the catalog", "unknown_plan")
    if metering is None:
        return UsageProblem("event_type", f"plan {route.plan_id} meters no event type {event.event_type!r}",
                            "unknown_event_type")
    for name, meter_id in metering.numeric_properties:
        value = event.properties.get(name)
        if type(value) is not int and numeric_value(value) is None:  # ints: the common case, no Decimal
            return UsageProblem(f"properties.{name}", f"meter {meter_id} needs a number here", "missing_property")
    return None


# --- one batch ----------------------------------------------------------------------------------------------


@dataclass
class Intake:
    """The fate of each checked event of a batch (indexes into the request) and the messages to send."""

    usage: list[KafkaMessage] = field(default_factory=list)
    accepted: list[tuple[int, str]] = field(default_factory=list)
    parked: list[tuple[int, ValidEvent]] = field(default_factory=list)
    duplicates: list[tuple[int, str]] = field(default_factory=list)
    rejected: list[tuple[int, str, str, FieldProblem]] = field(default_factory=list)  # index, tx, code, problem


def sort_events(events: Sequence[tuple[int, ValidEvent]], routes: Mapping[str, Route], catalog: Catalog,
                spend: SpendVerdicts, *, received_at_utc: str, correlation_id: str | None) -> Intake:
    """Decide each event (see the module docstring); `routes` resolves every event's customer reference and
    `received_at_utc` is `utc_text(now)`. # NOTE: the hot path: plain tuples and one pass."""
    intake = Intake()
    keys: dict[str, bytes] = {}
    # (customer, transaction_id) of the events this request accepts or parks (the worker's dedupe key; the
    # producer's id for a parked one, unknown by definition): a repeat in the same request is reported
    # `duplicate` instead of `accepted` twice, and only the first is sent.
    taken: set[tuple[str, str]] = set()
    meters: Meters = {}
    for index, event in events:
        route = routes[event.customer_id]
        customer_id, subscription_id = route.customer_id, route.subscription_id
        dedupe_key = (customer_id or event.customer_id, event.transaction_id)
        if dedupe_key in taken:
            intake.duplicates.append((index, event.transaction_id))
            continue
        if customer_id is None:
            intake.parked.append((index, event))
            taken.add(dedupe_key)
            continue
        if subscription_id is None or route.status not in ACCEPTS_USAGE:
            problem = _no_subscription(route)
            intake.rejected.append((index, event.transaction_id, problem.code, problem))
            continue
        refused = plan_problem(catalog, route, event, meters)
        if refused is not None:
            intake.rejected.append((index, event.transaction_id, refused.code, refused))
            continue
        over = spend.refuse(route, event)
        if over is not None:
            intake.rejected.append((index, event.transaction_id, over[0], over[1]))
            continue
        key = keys.get(subscription_id)
        if key is None:
            key = keys[subscription_id] = subscription_id.encode()
        intake.usage.append({"key": key, "value": usage_value(
            event, customer_id=customer_id, subscription_id=subscription_id, received_at_utc=received_at_utc,
            producer=PRODUCER, correlation_id=correlation_id)})
        intake.accepted.append((index, event.transaction_id))
        taken.add(dedupe_key)
    return intake


def _unmatched_id(customer_ref: str, transaction_id: str) -> uuid.UUID:
    return uuid.uuid5(_UNMATCHED_NAMESPACE, f"{customer_ref}\x1f{transaction_id}")


def park(uow: UnitOfWorkFactory, parked: Iterable[ValidEvent], submitted_by: str) -> None:
    """Store events of unknown customers and copy them to `usage.unmatched.v1` (the event's JSON, keyed by
    the reference it named), both in one transaction; a repeat of a parked (reference, transaction_id) is
    stored once, and its copy has the same message id."""
    bodies = [(event, event.as_json()) for event in parked]
    with uow() as work:
        work.park_usage([(event.customer_id, event.transaction_id, body) for event, body in bodies], submitted_by)
        for event, body in bodies:
            work.publish_document(topics.USAGE_UNMATCHED, event.customer_id,
                                  _unmatched_id(event.customer_id, event.transaction_id), UNMATCHED_TYPE, body)


# --- unmatched usage: list and replay ------------------------------------------------------------------------------


def unmatched_page(uow: UnitOfWorkFactory, *, customer_ref: str | None, include_replayed: bool,
                   after: int | None, limit: int) -> list[dict[str, Any]]:
    with uow() as work:
        return work.unmatched_page(customer_ref=customer_ref, include_replayed=include_replayed, after=after,
                                   limit=limit)


@dataclass(frozen=True)
class Replay:
    replayed: int
    still_rejected: list[tuple[int, str, UsageProblem]]  # unmatched row id, transaction_id, why


def replay_unmatched(uow: UnitOfWorkFactory, catalog: Catalog, route: Route, customer_ref: str, now: datetime,
                     correlation_id: str | None) -> Replay:
    """Send the parked usage of `customer_ref` (now resolved to `route`) as usage, and mark it replayed: the
    messages (outbox) and the marks commit together, so a replay is neither lost nor sent twice."""
    if route.customer_id is None:
        raise CustomerStillUnknown(f"no customer or alias {customer_ref!r} yet")
    if not accepts_usage(route):
        raise NoSubscriptionAcceptsUsage("subscribe the customer first")
    assert route.subscription_id is not None  # accepts_usage
    window = EventWindow.at(now)
    replayed = 0
    rejected: list[tuple[int, str, UsageProblem]] = []
    with uow() as work:
        rows = work.unmatched_to_replay(customer_ref)
        for row_id, body in rows:
            event = UsageEvent.model_validate(body)
            # NOTE: a replay is a reception at `now`, and the worker holds every usage message to the window
            # at its received_at (shared.contracts.usage_rules): an event parked more than 34 days ago is
            # refused here (timestamp_too_old, as its period is invoiced) rather than sent and dead-lettered.
            problem = check_event(event, window) or plan_problem(catalog, route, event)
            if problem is not None:
                rejected.append((row_id, event.transaction_id, problem))
                continue
            message = usage_message(event, customer_id=route.customer_id, subscription_id=route.subscription_id,
                                    received_at=now, producer=REPLAY_PRODUCER, correlation_id=correlation_id)
            envelope = orjson.loads(message.value)
            work.publish_document(topics.USAGE, message.key, uuid.UUID(envelope["event_id"]), envelope["type"],
                                  envelope)
            replayed += 1
        work.mark_replayed([row_id for row_id, _ in rows])
    return Replay(replayed, rejected)

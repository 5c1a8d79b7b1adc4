"""Domain events recorded by the subscription and invoice aggregates.

Every event is a frozen dataclass named in the past tense and carries the subscription id, the
aggregate version it produced (1, 2, 3, ... per aggregate) and the aware UTC instant it occurred at.
Invoice events also carry the invoice id; their version is the invoice's own version.
``event_payload`` turns an event into JSON-ready primitives for the outbox; wire contracts (pydantic)
live in ``shared.contracts`` and map from these.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from datetime import datetime
from decimal import Decimal
from enum import Enum

from shared.domain.calendar import Period, ensure_utc, iso_instant
from shared.domain.errors import InvalidValueError
from shared.domain.ids import CustomerId, InvoiceId, SubscriptionId
from shared.domain.money import Money


@dataclass(frozen=True, kw_only=True, slots=True)
class DomainEvent:
    subscription_id: SubscriptionId
    version: int
    occurred_at: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "occurred_at", ensure_utc(self.occurred_at, "occurred_at"))
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise InvalidValueError(f"event version must be a positive int, got {self.version!r}")

    @property
    def name(self) -> str:
        return type(self).__name__


# --- subscription ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class SubscriptionStarted(DomainEvent):
    customer_id: CustomerId
    plan_id: str
    status: str
    seats: int
    interval: str
    period: Period
    trial_end: datetime | None
    coupon_id: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class TrialEnded(DomainEvent):
    from_status: str
    to_status: str
    has_payment_method: bool
    period: Period


@dataclass(frozen=True, kw_only=True, slots=True)
class SubscriptionBecamePastDue(DomainEvent):
    from_status: str
    to_status: str
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class SubscriptionReactivated(DomainEvent):
    from_status: str
    to_status: str


@dataclass(frozen=True, kw_only=True, slots=True)
class SubscriptionPaused(DomainEvent):
    from_status: str
    to_status: str


@dataclass(frozen=True, kw_only=True, slots=True)
class SubscriptionResumed(DomainEvent):
    from_status: str
    to_status: str


@dataclass(frozen=True, kw_only=True, slots=True)
class SubscriptionCancelled(DomainEvent):
    from_status: str
    to_status: str
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class CancellationScheduled(DomainEvent):
    effective_at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class CancellationRevoked(DomainEvent):
    pass


@dataclass(frozen=True, kw_only=True, slots=True)
class PlanChanged(DomainEvent):
    from_plan_id: str
    to_plan_id: str
    from_seats: int
    to_seats: int
    prorated: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class PlanChangeScheduled(DomainEvent):
    from_plan_id: str
    to_plan_id: str
    effective_at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class ScheduledChangeCancelled(DomainEvent):
    pending_plan_id: str | None
    pending_seats: int | None


@dataclass(frozen=True, kw_only=True, slots=True)
class SeatsChanged(DomainEvent):
    from_seats: int
    to_seats: int
    prorated: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class SeatChangeScheduled(DomainEvent):
    from_seats: int
    to_seats: int
    effective_at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class BillingIntervalChanged(DomainEvent):
    from_plan_id: str
    to_plan_id: str
    from_interval: str
    to_interval: str
    period: Period


@dataclass(frozen=True, kw_only=True, slots=True)
class PeriodAdvanced(DomainEvent):
    closed_period: Period
    period: Period
    plan_id: str
    seats: int


@dataclass(frozen=True, kw_only=True, slots=True)
class CouponApplied(DomainEvent):
    coupon_id: str


@dataclass(frozen=True, kw_only=True, slots=True)
class CouponRedeemed(DomainEvent):
    coupon_id: str
    invoice_key: str
    amount: Money


# --- invoice -----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class InvoiceFinalized(DomainEvent):
    invoice_id: InvoiceId
    number: str
    total: Money
    amount_due: Money


@dataclass(frozen=True, kw_only=True, slots=True)
class InvoicePaid(DomainEvent):
    invoice_id: InvoiceId
    amount_paid: Money
    payment_reference: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class InvoiceVoided(DomainEvent):
    invoice_id: InvoiceId
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class InvoiceMarkedUncollectible(DomainEvent):
    invoice_id: InvoiceId
    reason: str


# Most fields of an event are ids, versions, counts and flags: already JSON-ready (an id is a plain str at runtime;
# a StrEnum is not `str` itself, so it still goes through the checks below).
_PLAIN: frozenset[type] = frozenset({str, int, bool, type(None)})


def _primitive(value: object) -> object:
    if type(value) in _PLAIN:
        return value
    if isinstance(value, Money):
        return {"amount_minor": value.amount_minor, "currency": value.currency}
    if isinstance(value, Period):
        return {"start": iso_instant(value.start), "end": iso_instant(value.end)}
    if isinstance(value, datetime):
        return iso_instant(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, frozenset | set):
        return sorted(_primitive(item) for item in value)  # type: ignore[type-var]
    if isinstance(value, list | tuple):
        return [_primitive(item) for item in value]
    return value


def event_field(event: DomainEvent, name: str) -> object:
    """One field of `event_payload(event)` (None when the event has no such field), without building the rest."""
    value = getattr(event, name, None)
    return None if value is None else _primitive(value)


def event_payload(event: DomainEvent) -> dict[str, object]:
    """The event's fields as JSON-ready primitives (Money as amount_minor + currency, ISO instants)."""
    if not is_dataclass(event):
        raise TypeError(f"not a domain event: {event!r}")
    return {name: _primitive(getattr(event, name)) for name in _field_names(type(event))}


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    """The fields of an event class, in order (`dataclasses.fields` rebuilds them at every call)."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(item.name for item in fields(cls))
    return names

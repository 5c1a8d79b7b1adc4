"""What the worker announces on billing-events.v1, built from the aggregates (wire payloads only)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from services.billing_worker.service_layer.errors import snake_case
from services.billing_worker.service_layer.model import SubscriptionState
from shared.domain.calendar import iso_instant
from shared.domain.events import DomainEvent, SubscriptionStarted, event_field
from shared.domain.invoice import Invoice
from shared.domain.money import Money

# NOTE: the payloads are built as the dicts their wire models dump to (`InvoiceEvent(...).model_dump(mode="json")`,
# `CreditsChanged(...)`, same keys in the same order, pinned by tests/unit/worker/test_announcements.py) rather
# than through the models: every field here is the worker's own, already checked by the domain, and a billing run
# announces several per close (building and dumping a model each time was a visible share of its CPU). The
# models stay the contract: consumers validate with them.


def invoice_event(invoice: Invoice, state: SubscriptionState, *, decline_code: str | None = None,
                  hard_decline: bool = False, attempt_no: int | None = None,
                  finalizes_at: datetime | None = None) -> dict[str, Any]:
    """The `InvoiceEvent` payload of the invoice as it is now."""
    return {"invoice_id": invoice.id, "subscription_id": state.id, "customer_id": state.subscription.customer_id,
            "number": invoice.number, "status": invoice.status.value, "total_minor": invoice.total.amount_minor,
            "currency": invoice.currency, "period_start": wire_instant(invoice.period.start),
            "period_end": wire_instant(invoice.period.end), "decline_code": decline_code,
            "hard_decline": hard_decline, "attempt_no": attempt_no, "finalizes_at": wire_instant(finalizes_at)}


def credits_payload(state: SubscriptionState, meter_id: str, amount: Money | Decimal, source: str | None,
                    expires_at: datetime | None) -> dict[str, Any]:
    """The `CreditsChanged` payload of a grant or an expiry: money as minor units and currency, or units."""
    minor: int | None = None
    units: str | None = None
    currency: str | None = None
    if isinstance(amount, Money):
        minor, currency = abs(amount.amount_minor), amount.currency
    else:
        units = str(abs(amount))
    return {"subscription_id": state.id, "customer_id": state.subscription.customer_id, "meter_id": meter_id,
            "amount_minor": minor, "units": units, "currency": currency, "source": source,
            "expires_at": wire_instant(expires_at)}


def wire_instant(at: datetime | None) -> str | None:
    """An instant as pydantic writes it in a JSON dump: ISO 8601, a zero UTC offset as "Z"."""
    if at is None:
        return None
    text = iso_instant(at)
    return f"{text[:-6]}Z" if text.endswith("+00:00") else text


def status_change(event: DomainEvent) -> tuple[str | None, str, str] | None:
    """(old status, new status, reason) when `event` changed the subscription's status, else None."""
    if isinstance(event, SubscriptionStarted):
        return None, event.status, "subscription_started"
    old, new = event_field(event, "from_status"), event_field(event, "to_status")
    if isinstance(new, str) and old != new:
        reason = event_field(event, "reason")
        return (str(old) if old is not None else None, new,
                str(reason) if isinstance(reason, str) else snake_case(event.name))
    return None


def status_snapshot(state: SubscriptionState) -> dict[str, Any]:
    """The subscription as the edge shows it in an `applied` command outcome."""
    sub = state.subscription
    return {"subscription_id": sub.id, "status": sub.status.value, "plan_id": sub.plan_id, "seats": sub.seats,
            "pending_plan_id": sub.pending_plan_id, "pending_seats": sub.pending_seats,
            "current_period_start": iso_instant(sub.current_period.start),
            "current_period_end": iso_instant(sub.current_period.end),
            "cancel_at_period_end": sub.cancel_at_period_end,
            "trial_end": sub.trial_end.isoformat() if sub.trial_end else None}

"""What the worker announces on billing-events.v1, built from the aggregates (wire payloads only)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from services.billing_worker.service_layer.errors import snake_case
from services.billing_worker.service_layer.model import SubscriptionState
from shared.contracts.messages import CreditsChanged, InvoiceEvent
from shared.domain.events import DomainEvent, SubscriptionStarted, event_field
from shared.domain.invoice import Invoice
from shared.domain.money import Money


def invoice_event(invoice: Invoice, state: SubscriptionState, **extra: Any) -> InvoiceEvent:
    return InvoiceEvent(invoice_id=invoice.id, subscription_id=state.id, customer_id=state.subscription.customer_id,
                        number=invoice.number, status=invoice.status.value, total_minor=invoice.total.amount_minor,
                        currency=invoice.currency, period_start=invoice.period.start,
                        period_end=invoice.period.end, **extra)


def credits_payload(state: SubscriptionState, meter_id: str, amount: Money | Decimal, source: str | None,
                    expires_at: datetime | None) -> CreditsChanged:
    if isinstance(amount, Money):
        return CreditsChanged(subscription_id=state.id, customer_id=state.subscription.customer_id,
                              meter_id=meter_id, amount_minor=abs(amount.amount_minor), currency=amount.currency,
                              source=source, expires_at=expires_at)
    return CreditsChanged(subscription_id=state.id, customer_id=state.subscription.customer_id, meter_id=meter_id,
                          units=abs(amount), source=source, expires_at=expires_at)


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
            "current_period_start": sub.current_period.start.isoformat(),
            "current_period_end": sub.current_period.end.isoformat(),
            "cancel_at_period_end": sub.cancel_at_period_end,
            "trial_end": sub.trial_end.isoformat() if sub.trial_end else None}

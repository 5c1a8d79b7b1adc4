"""What the payment provider tells us about a customer: deleted (and its saved payment methods with it)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from services.billing_worker.service_layer.errors import Ignored, Refused
from services.billing_worker.service_layer.handlers import Handler
from services.billing_worker.service_layer.unit_of_work import BillingUnitOfWork
from shared.contracts.envelope import Envelope
from shared.contracts.messages import CustomerDeleted, PaymentMethodRemoved
from shared.domain.calendar import ensure_utc
from shared.domain.ids import event_uuid


def customer_deleted(uow: BillingUnitOfWork, env: Envelope, p: CustomerDeleted, now: datetime) -> dict[str, Any]:
    """The provider deleted the customer, and its saved payment methods with it: forget the subscription's
    method, so its next charge fails with `payment_method_missing` and dunning asks for a new card."""
    state = uow.subscription(p.subscription_id)
    if state.subscription.customer_id != p.customer_id:
        raise Refused("customer_mismatch", f"subscription {state.id} belongs to {state.subscription.customer_id}, "
                                           f"not {p.customer_id}")
    if state.subscription.payment_method_id is None:
        raise Ignored(f"subscription {state.id} has no payment method on file")
    previous = state.subscription.forget_payment_method()
    # Charges not dispatched yet would use the deleted method: they fail as missing a method instead.
    # (Attempts already in flight or unknown keep theirs: they are reconciled, never re-sent blindly.)
    detached = uow.detach_pending_payment_method(state.id)
    uow.add_audit(occurred_at=now, action="payment_method.removed", entity_type="subscription", entity_id=state.id,
                  subscription_id=state.id, customer_id=state.subscription.customer_id, command_id=str(env.event_id),
                  detail={"reason": "customer_deleted", "payment_method_id": previous,
                          "stripe_customer_id": p.stripe_customer_id,
                          "deleted_at": ensure_utc(p.deleted_at).isoformat(),
                          "pending_attempts_detached": detached})
    uow.emit("payment_method.removed", PaymentMethodRemoved(
        subscription_id=state.id, customer_id=state.subscription.customer_id,
        previous_payment_method_id=previous, reason="customer_deleted"),
        key=state.id, event_id=event_uuid(env.event_id, "pm_removed"), at=now, correlation=env)
    uow.touch(state)
    return {"previous_payment_method_id": previous, "pending_attempts_detached": detached}


CUSTOMER_DELETED = Handler(customer_deleted)

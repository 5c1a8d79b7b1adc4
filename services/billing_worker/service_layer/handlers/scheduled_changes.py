"""Undo what waits for the period end: a scheduled downgrade or seat reduction, a cancellation at the period end.

Both are refused `nothing_scheduled` (the domain's `NothingScheduledError`) when nothing is scheduled. A change
back to the current plan or seats (`subscriptions.change_plan` / `change_seats`) undoes a scheduled change too:
that rule is the domain's (`Subscription.change_plan`, `change_seats`).
"""

from __future__ import annotations

from datetime import datetime

from services.billing_worker.service_layer.handlers import Handler
from services.billing_worker.service_layer.unit_of_work import BillingUnitOfWork
from shared.contracts.envelope import Envelope
from shared.contracts.messages import CancelScheduledChange, RevokeCancellation


def cancel_scheduled_change(uow: BillingUnitOfWork, env: Envelope, p: CancelScheduledChange, now: datetime) -> None:
    state = uow.subscription(p.subscription_id)
    state.subscription.cancel_scheduled_change(at=now)
    uow.subscription_events(state, env)


def revoke_cancellation(uow: BillingUnitOfWork, env: Envelope, p: RevokeCancellation, now: datetime) -> None:
    state = uow.subscription(p.subscription_id)
    state.subscription.revoke_cancellation(at=now)
    uow.subscription_events(state, env)


CANCEL_SCHEDULED_CHANGE = Handler(cancel_scheduled_change)
REVOKE_CANCELLATION = Handler(revoke_cancellation)

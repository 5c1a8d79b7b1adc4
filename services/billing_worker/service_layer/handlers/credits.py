"""Credits: grants (top-ups, promotions) and the write-off of what expired."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from services.billing_worker.service_layer.announcements import credits_payload
from services.billing_worker.service_layer.errors import Refused
from services.billing_worker.service_layer.handlers import Handler
from services.billing_worker.service_layer.unit_of_work import BillingUnitOfWork
from shared.contracts.envelope import Envelope
from shared.contracts.messages import ExpireCredits, GrantCredits
from shared.domain.calendar import ensure_utc
from shared.domain.ids import event_uuid
from shared.domain.ledger import GrantSource
from shared.domain.money import Money


def expire_credits(uow: BillingUnitOfWork, env: Envelope, p: ExpireCredits, now: datetime) -> dict[str, Any]:
    state = uow.subscription(p.subscription_id)
    return {"expired_entries": uow.expire_credits(state, ensure_utc(p.at), env)}


def grant_credits(uow: BillingUnitOfWork, env: Envelope, p: GrantCredits, now: datetime) -> dict[str, Any]:
    state = uow.subscription(p.subscription_id)
    if (p.amount_minor is None) == (p.units is None):
        raise Refused("invalid_amount", "a grant needs exactly one of amount_minor or units")
    amount: Money | Decimal = (Money(p.amount_minor, p.currency or state.currency) if p.amount_minor is not None
                               else Decimal(p.units or 0))
    ledger = uow.ledger(state).ledger
    ledger.grant(grant_id=f"{state.id}|{p.grant_id}", meter=p.meter_id, amount=amount,
                 source=GrantSource(p.source), effective_at=now, expires_at=p.expires_at,
                 priority=p.priority if "priority" in p.model_fields_set else None)
    uow.emit("credits.granted", credits_payload(state, p.meter_id, amount, p.source, p.expires_at),
             key=state.id, event_id=event_uuid(state.id, "credits.granted", p.grant_id), at=now, correlation=env)
    uow.touch(state)
    return {"grant_id": p.grant_id}


EXPIRE = Handler(expire_credits)
GRANT = Handler(grant_credits)

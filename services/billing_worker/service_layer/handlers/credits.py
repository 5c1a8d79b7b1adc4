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
from shared.contracts.messages import ExpireCredits, GrantCredits, VoidCreditGrant
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
    stored_id = f"{state.id}|{p.grant_id}"
    if any(g.grant_id == stored_id for g in ledger.grants(p.meter_id)):
        return {"grant_id": p.grant_id, "replayed": True}  # the same grant sent again (an API retry)
    ledger.grant(grant_id=stored_id, meter=p.meter_id, amount=amount,
                 source=GrantSource(p.source), effective_at=p.effective_at or now, expires_at=p.expires_at,
                 priority=p.priority)
    uow.emit("credits.granted", credits_payload(state, p.meter_id, amount, p.source, p.expires_at),
             key=state.id, event_id=event_uuid(state.id, "credits.granted", p.grant_id), at=now, correlation=env)
    uow.touch(state)
    return {"grant_id": p.grant_id}


def void_grant(uow: BillingUnitOfWork, env: Envelope, p: VoidCreditGrant, now: datetime) -> dict[str, Any]:
    """Write off what is left of a grant (idempotent: a second void writes nothing more)."""
    state = uow.subscription(p.subscription_id)
    ledger = uow.ledger(state).ledger
    grant = next((g for m in ledger.meters for g in ledger.grants(m) if g.grant_id == p.grant_id), None)
    if grant is None:
        raise Refused("unknown_credit_grant", f"grant {p.grant_id} is not one of subscription {state.id}")
    already = ledger.is_voided(grant.grant_id)
    entry = ledger.void(grant.grant_id, now)
    written_off = (-entry.amount.amount_minor if isinstance(entry.amount, Money) else str(-entry.amount))
    if not already:
        uow.add_audit(occurred_at=now, action="credits.grant_voided", entity_type="credit_grant",
                      entity_id=grant.grant_id, subscription_id=state.id, customer_id=state.subscription.customer_id,
                      command_id=str(env.event_id), detail={"reason": p.reason, "written_off": written_off})
        uow.touch(state)
    return {"grant_id": grant.grant_id, "written_off": written_off, "replayed": already}


EXPIRE = Handler(expire_credits)
GRANT = Handler(grant_credits)
VOID_GRANT = Handler(void_grant)

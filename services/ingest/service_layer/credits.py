"""Credits through the API (issue 15, item 3), the edge's half: grant, void, list grants, a customer's credits.

The worker is the only writer of a subscription's credit ledger: a grant and a void are commands on `commands.v1`
keyed by the subscription (`lifecycle.send_command`: outbox + audit in one transaction), answered with the
worker's outcome. The edge refuses what it can know from the catalog (`invalid_credit_grant`: an unknown meter,
money for a unit meter or units for a money meter, a window that ends before it starts) and an unknown
subscription or grant (404).

# NOTE: a grant applies to ONE meter (the ledger keeps credit per meter); "applicability to several meters" is
# one grant per meter. A grant's id derives from the subscription and the request's Idempotency-Key, so a retry
# after the edge's idempotency row was purged reaches the worker as the same grant, which applies it once.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.dialects.postgresql import insert

from services.ingest.audit import record
from services.ingest.auth import Principal
from services.ingest.service_layer import lifecycle
from services.ingest.service_layer.lifecycle import Accepted
from services.ingest.service_layer.refusals import (
    InvalidCreditGrant,
    UnknownCreditGrant,
    UnknownCustomer,
    UnknownSubscription,
)
from services.ingest.service_layer.unit_of_work import UnitOfWorkFactory
from shared.adapters.postgres.schema.billing import (
    auto_recharges,
    credit_entries,
    credit_grants,
    credit_purchases,
    subscriptions,
)
from shared.adapters.postgres.schema.core import customers
from shared.contracts.messages import GrantCredits, PurchaseCredits, VoidCreditGrant
from shared.domain.catalog import Catalog, credit_kinds
from shared.domain.credit_purchase import AutoRecharge
from shared.domain.errors import InvalidValueError
from shared.domain.money import Money


@dataclass(frozen=True)
class GrantRequest:
    meter_id: str
    source: Literal["promotional", "top_up"]
    amount_minor: int | None = None
    units: Decimal | None = None
    priority: int | None = None
    effective_at: datetime | None = None
    expires_at: datetime | None = None
    description: str | None = None


class CreditGrantView(BaseModel):
    grant_id: str
    subscription_id: str
    meter_id: str
    source: str
    priority: int
    currency: str | None = None
    granted_minor: int | None = None
    remaining_minor: int | None = None
    granted_units: Decimal | None = None
    remaining_units: Decimal | None = None
    effective_at: datetime
    expires_at: datetime | None = None
    voided: bool = False


class MeterCreditsView(BaseModel):
    meter_id: str
    currency: str | None = None
    remaining_minor: int | None = None
    remaining_units: Decimal | None = None
    grants: int


class CustomerCreditsView(BaseModel):
    customer_id: str
    at: datetime
    meters: list[MeterCreditsView]


class CreditPurchaseView(BaseModel):
    purchase_id: str
    subscription_id: str
    meter_id: str
    amount_minor: int
    price_minor: int
    currency: str
    invoice_id: str
    origin: str
    status: str
    grant_id: str | None = None
    expires_at: datetime | None = None
    created_at: datetime
    settled_at: datetime | None = None


def new_grant_id(subscription_id: str, idempotency_key: str | None, prefix: str = "cg") -> str:
    """`cg_<32 hex>`: derived from the subscription and the Idempotency-Key when one is sent, else random."""
    if idempotency_key is None:
        return f"{prefix}_{uuid.uuid4().hex}"
    return f"{prefix}_" + hashlib.sha256(f"{subscription_id}|{idempotency_key}".encode()).hexdigest()[:32]


def public_grant_id(stored_id: str, subscription_id: str) -> str:
    """The id the API shows: the stored id without its `<subscription>|` prefix (plan grants keep theirs)."""
    prefix = f"{subscription_id}|"
    return stored_id[len(prefix):] if stored_id.startswith(prefix) else stored_id


def check_meter_amount(catalog: Catalog, meter_id: str, amount_minor: int | None, units: Decimal | None) -> None:
    """Refuse (`invalid_credit_grant`) an unknown meter, or an amount of the wrong kind for it."""
    kinds = credit_kinds(catalog)
    if meter_id not in kinds:
        raise InvalidCreditGrant(f"unknown meter {meter_id!r}", fields=[("meter_id", "unknown_meter")])
    if (amount_minor is None) == (units is None):
        raise InvalidCreditGrant("a grant needs exactly one of amount_minor or units",
                                 fields=[("amount_minor", "exactly_one_of_amount_minor_units")])
    if kinds[meter_id] and amount_minor is not None:
        raise InvalidCreditGrant(f"meter {meter_id} counts credits in units", fields=[("amount_minor", "unit_meter")])
    if not kinds[meter_id] and units is not None:
        raise InvalidCreditGrant(f"meter {meter_id} counts credits in money", fields=[("units", "money_meter")])


def grant(uow: UnitOfWorkFactory, catalog: Catalog, subscription_id: str, request: GrantRequest, *,
          idempotency_key: str | None, principal: Principal, authorize: Callable[[str], None], now: datetime,
          request_id: str | None) -> tuple[Accepted, str]:
    """Send `credits.grant` for the subscription; the grant's id is returned with the accepted command."""
    check_meter_amount(catalog, request.meter_id, request.amount_minor, request.units)
    effective_at = request.effective_at or now
    if request.expires_at is not None and request.expires_at <= effective_at:
        raise InvalidCreditGrant("a grant must expire after it takes effect",
                                 fields=[("expires_at", "not_after_effective_at")])
    grant_id = new_grant_id(subscription_id, idempotency_key)
    extra = {} if request.priority is None else {"priority": request.priority}

    def build(customer_id: str) -> GrantCredits:
        return GrantCredits(subscription_id=subscription_id, customer_id=customer_id, grant_id=grant_id,
                            meter_id=request.meter_id, amount_minor=request.amount_minor, units=request.units,
                            source=request.source, expires_at=request.expires_at, effective_at=effective_at,
                            description=request.description, **extra)

    accepted = lifecycle.send_command(
        uow, subscription_id, build, "credits.grant", principal=principal, authorize=authorize, now=now,
        request_id=request_id, grant_id=grant_id, meter_id=request.meter_id, amount_minor=request.amount_minor,
        units=None if request.units is None else str(request.units), source=request.source,
        description=request.description)
    return accepted, grant_id


def find_grant(engine: sa.Engine, grant_id: str) -> tuple[str, str, str]:
    """(stored id, subscription, customer) of the grant the API calls `grant_id`; `UnknownCreditGrant` else."""
    g = credit_grants.c
    query = sa.select(g.grant_id, g.subscription_id, g.customer_id).where(
        sa.or_(g.grant_id == grant_id,
               sa.and_(sa.func.split_part(g.grant_id, "|", 2) == grant_id,
                       g.grant_id == g.subscription_id + "|" + grant_id)))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    if len(rows) != 1:
        raise UnknownCreditGrant(f"no credit grant {grant_id!r}", field="grant_id")
    return rows[0].grant_id, rows[0].subscription_id, rows[0].customer_id


def void(uow: UnitOfWorkFactory, engine: sa.Engine, grant_id: str, reason: str | None, *, principal: Principal,
         authorize: Callable[[str], None], now: datetime, request_id: str | None) -> Accepted:
    """Send `credits.void_grant`: the worker writes off what is left of the grant (idempotent)."""
    stored_id, subscription_id, customer_id = find_grant(engine, grant_id)
    authorize(customer_id)

    def build(owner: str) -> VoidCreditGrant:
        return VoidCreditGrant(subscription_id=subscription_id, customer_id=owner, grant_id=stored_id, reason=reason)

    return lifecycle.send_command(uow, subscription_id, build, "credits.void_grant", principal=principal,
                                  authorize=authorize, now=now, request_id=request_id, grant_id=grant_id,
                                  reason=reason)


def _grant_rows(conn: sa.Connection, where: sa.ColumnElement[bool]) -> list[sa.Row]:  # type: ignore[type-arg]
    g, e = credit_grants.c, credit_entries.c
    voided = sa.func.bool_or(e.kind == "void")
    query = (sa.select(g.grant_id, g.subscription_id, g.meter_id, g.source, g.priority, g.currency, g.amount_minor,
                       g.units, g.effective_at, g.expires_at,
                       sa.func.coalesce(sa.func.sum(e.amount_minor), 0).label("remaining_minor"),
                       sa.func.coalesce(sa.func.sum(e.units), 0).label("remaining_units"),
                       sa.func.coalesce(voided, False).label("voided"))
             .outerjoin(credit_entries, e.grant_id == g.grant_id)
             .where(where).group_by(g.grant_id)
             .order_by(g.priority, g.expires_at.asc().nulls_last(), g.effective_at, g.grant_id))
    return list(conn.execute(query).all())


def grants_of(engine: sa.Engine, subscription_id: str, authorize: Callable[[str], None]) -> list[CreditGrantView]:
    """The subscription's grants with what is left of each, in the order they are consumed."""
    with engine.connect() as conn:
        owner = conn.execute(sa.select(subscriptions.c.customer_id)
                             .where(subscriptions.c.subscription_id == subscription_id)).scalar()
        if owner is None:
            raise UnknownSubscription(f"no subscription {subscription_id!r}", field="subscription_id")
        authorize(owner)
        rows = _grant_rows(conn, credit_grants.c.subscription_id == subscription_id)
    return [CreditGrantView(
        grant_id=public_grant_id(r.grant_id, r.subscription_id), subscription_id=r.subscription_id,
        meter_id=r.meter_id, source=r.source, priority=r.priority, currency=r.currency,
        granted_minor=r.amount_minor, remaining_minor=int(r.remaining_minor) if r.amount_minor is not None else None,
        granted_units=r.units, remaining_units=Decimal(r.remaining_units) if r.units is not None else None,
        effective_at=r.effective_at, expires_at=r.expires_at, voided=bool(r.voided)) for r in rows]


def credits_of_customer(engine: sa.Engine, customer_id: str, now: datetime) -> CustomerCreditsView:
    """What the customer can draw now, per meter, summed over the grants of all its subscriptions usable at
    `now` (a voided or expired grant has nothing left)."""
    g = credit_grants.c
    with engine.connect() as conn:
        if conn.execute(sa.select(customers.c.customer_id).where(customers.c.customer_id == customer_id)).first() \
                is None:
            raise UnknownCustomer(f"no customer {customer_id!r}", field="customer_id")
        rows = _grant_rows(conn, sa.and_(g.customer_id == customer_id, g.effective_at <= now,
                                         sa.or_(g.expires_at.is_(None), g.expires_at > now)))
    totals: dict[tuple[str, str | None], tuple[int, Decimal, int]] = {}
    for r in rows:
        if r.voided:
            continue
        minor, units, count = totals.get((r.meter_id, r.currency), (0, Decimal(0), 0))
        totals[(r.meter_id, r.currency)] = (minor + int(r.remaining_minor), units + Decimal(r.remaining_units),
                                            count + 1)
    return CustomerCreditsView(customer_id=customer_id, at=now, meters=[
        MeterCreditsView(meter_id=meter, currency=currency, grants=count,
                         remaining_minor=minor if currency is not None else None,
                         remaining_units=units if currency is None else None)
        for (meter, currency), (minor, units, count) in sorted(totals.items(), key=lambda kv: (kv[0][0],
                                                                                             kv[0][1] or ""))])


# --- prepaid credit purchases -----------------------------------------------------------------------------


def purchase(uow: UnitOfWorkFactory, catalog: Catalog, subscription_id: str, meter_id: str, amount_minor: int,
             price_minor: int | None, expires_at: datetime | None, *, idempotency_key: str | None,
             principal: Principal, authorize: Callable[[str], None], now: datetime,
             request_id: str | None) -> tuple[Accepted, str]:
    """Send `credits.purchase`: the worker invoices `price_minor` (default: the amount) and grants the credit
    when that invoice is paid. Only money meters sell credit (`invalid_credit_grant`)."""
    check_meter_amount(catalog, meter_id, amount_minor, None)
    if expires_at is not None and expires_at <= now:
        raise InvalidCreditGrant("bought credit must expire in the future", fields=[("expires_at", "in_the_past")])
    purchase_id = new_grant_id(subscription_id, idempotency_key, prefix="cp")
    price = amount_minor if price_minor is None else price_minor

    def build(customer_id: str) -> PurchaseCredits:
        return PurchaseCredits(subscription_id=subscription_id, customer_id=customer_id, purchase_id=purchase_id,
                               meter_id=meter_id, amount_minor=amount_minor, price_minor=price,
                               expires_at=expires_at)

    accepted = lifecycle.send_command(
        uow, subscription_id, build, "credits.purchase", principal=principal, authorize=authorize, now=now,
        request_id=request_id, purchase_id=purchase_id, meter_id=meter_id, amount_minor=amount_minor,
        price_minor=price)
    return accepted, purchase_id


def _purchase_view(row: Any) -> CreditPurchaseView:
    return CreditPurchaseView.model_validate(dict(row._mapping))


def purchases_of(engine: sa.Engine, subscription_id: str, authorize: Callable[[str], None]
                 ) -> list[CreditPurchaseView]:
    """The subscription's credit purchases, newest first."""
    with engine.connect() as conn:
        owner = conn.execute(sa.select(subscriptions.c.customer_id)
                             .where(subscriptions.c.subscription_id == subscription_id)).scalar()
        if owner is None:
            raise UnknownSubscription(f"no subscription {subscription_id!r}", field="subscription_id")
        authorize(owner)
        rows = conn.execute(sa.select(credit_purchases).where(credit_purchases.c.subscription_id == subscription_id)
                            .order_by(credit_purchases.c.created_at.desc(), credit_purchases.c.purchase_id)).all()
    return [_purchase_view(r) for r in rows]


# --- auto-recharge -----------------------------------------------------------------------------------------


class AutoRechargeView(BaseModel):
    subscription_id: str
    meter_id: str
    threshold_minor: int
    target_minor: int
    currency: str
    enabled: bool
    updated_at: datetime | None = None


def set_auto_recharge(engine: sa.Engine, catalog: Catalog, subscription_id: str, meter_id: str,
                      threshold_minor: int, target_minor: int, enabled: bool, *, principal: Principal,
                      authorize: Callable[[str], None], request_id: str | None) -> AutoRechargeView:
    """Store the meter's auto-recharge (a setting the worker reads; no command: nothing is billed by storing it).

    # NOTE: written by the edge, like invoice settings: the worker reads it when usage is materialised and at
    # each close; the purchase it may trigger is the worker's, under the subscription's single writer.
    """
    check_meter_amount(catalog, meter_id, threshold_minor or 1, None)
    with engine.begin() as conn:
        found = conn.execute(sa.select(subscriptions.c.customer_id, subscriptions.c.currency)
                             .where(subscriptions.c.subscription_id == subscription_id)).first()
        if found is None:
            raise UnknownSubscription(f"no subscription {subscription_id!r}", field="subscription_id")
        authorize(found.customer_id)
        try:
            AutoRecharge(meter_id, Money(threshold_minor, found.currency), Money(target_minor, found.currency))
        except InvalidValueError as exc:
            raise InvalidCreditGrant(str(exc), fields=[("target_minor", "not_above_threshold")]) from exc
        values = {"threshold_minor": threshold_minor, "target_minor": target_minor, "currency": found.currency,
                  "enabled": enabled, "updated_at": sa.func.now()}
        conn.execute(insert(auto_recharges).values(subscription_id=subscription_id, meter_id=meter_id, **values)
                     .on_conflict_do_update(index_elements=["subscription_id", "meter_id"], set_=values))
        record(conn, principal, "credits.auto_recharge", customer_id=found.customer_id,
               subscription_id=subscription_id, request_id=request_id, meter_id=meter_id,
               threshold_minor=threshold_minor, target_minor=target_minor, enabled=enabled)
        row = conn.execute(sa.select(auto_recharges).where(auto_recharges.c.subscription_id == subscription_id,
                                                           auto_recharges.c.meter_id == meter_id)).one()
    return AutoRechargeView.model_validate(dict(row._mapping))


def auto_recharges_of(engine: sa.Engine, subscription_id: str, authorize: Callable[[str], None]
                      ) -> list[AutoRechargeView]:
    with engine.connect() as conn:
        owner = conn.execute(sa.select(subscriptions.c.customer_id)
                             .where(subscriptions.c.subscription_id == subscription_id)).scalar()
        if owner is None:
            raise UnknownSubscription(f"no subscription {subscription_id!r}", field="subscription_id")
        authorize(owner)
        rows = conn.execute(sa.select(auto_recharges).where(auto_recharges.c.subscription_id == subscription_id)
                            .order_by(auto_recharges.c.meter_id)).all()
    return [AutoRechargeView.model_validate(dict(r._mapping)) for r in rows]

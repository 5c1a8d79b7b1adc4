"""Read queries over the worker's usage and credit tables, for the edge's "usage so far" view.

The billing worker is the only writer of these tables; services never import each other, so the edge's
read lives here. The period arithmetic is the one the worker's period close applies
(services/billing_worker/adapters/usage_close.py documents it): usage is bucketed by the UTC hour of the *event*
timestamp, a period's usage is every event with a timestamp from the period start on, and unbilled usage
from before the period start is late usage, billed as an adjustment at the next close. When the period
does not start on the hour, the hour that straddles its start is split with the event rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import sqlalchemy as sa

from shared.adapters.postgres.schema.billing import credit_entries, credit_grants
from shared.adapters.postgres.schema.usage import usage_aggregates, usage_events

BUCKET = timedelta(hours=1)


@dataclass(frozen=True)
class PeriodUsage:
    """Per-meter usage of the period that started at `period_start`, and late usage not yet billed."""

    subscription_id: str
    period_start: datetime
    totals: Mapping[str, Decimal]
    pending_late: Mapping[str, Decimal] = field(default_factory=dict)


@dataclass(frozen=True)
class GrantBalance:
    """One credit grant and what is left of it (the sum of its append-only ledger entries)."""

    grant_id: str
    meter_id: str
    source: str
    priority: int
    currency: str | None
    granted_minor: int | None
    remaining_minor: int | None
    granted_units: Decimal | None
    remaining_units: Decimal | None
    effective_at: datetime
    expires_at: datetime | None


def _floor_hour(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def usage_since(conn: sa.Connection, subscription_id: str, period_start: datetime) -> PeriodUsage:
    """Usage with a timestamp >= `period_start` per meter, and unbilled usage from before it."""
    lo = period_start.astimezone(UTC)
    lo_bucket = _floor_hour(lo)
    whole_from = lo_bucket if lo == lo_bucket else lo_bucket + BUCKET
    agg = usage_aggregates.c
    rows = conn.execute(
        sa.select(agg.meter_id,
                  sa.func.sum(agg.quantity).filter(agg.bucket_start >= whole_from),
                  sa.func.sum(agg.quantity - agg.billed_quantity).filter(agg.bucket_start < whole_from))
        .where(agg.subscription_id == subscription_id)
        .group_by(agg.meter_id)).all()
    totals = {meter: Decimal(current or 0) for meter, current, _ in rows}
    pending = {meter: Decimal(before or 0) for meter, _, before in rows}
    if lo != lo_bucket:
        # The straddling hour's unbilled quantity holds the events from period_start on (current usage)
        # and late events of the previous period: move the former from "pending" to "totals".
        e = usage_events.c
        for meter, quantity in conn.execute(
                sa.select(e.meter_id, sa.func.sum(e.quantity))
                .where(e.subscription_id == subscription_id, e.meter_id.is_not(None),
                       e.occurred_at >= lo, e.occurred_at < whole_from)
                .group_by(e.meter_id)).all():
            totals[meter] = totals.get(meter, Decimal(0)) + quantity
            pending[meter] = pending.get(meter, Decimal(0)) - quantity
    return PeriodUsage(subscription_id, lo, {m: q for m, q in totals.items() if q},
                       {m: q for m, q in pending.items() if q})


def grant_balances(conn: sa.Connection, subscription_id: str, *, usable_at: datetime | None = None
                   ) -> list[GrantBalance]:
    """The subscription's grants with their remaining balance, in the ledger's consumption order
    (priority, soonest expiry, oldest). With `usable_at`: only grants active at that instant."""
    g = credit_grants.c
    money = sa.func.coalesce(sa.func.sum(credit_entries.c.amount_minor), 0)
    units = sa.func.coalesce(sa.func.sum(credit_entries.c.units), 0)
    query = (sa.select(g.grant_id, g.meter_id, g.source, g.priority, g.currency, g.amount_minor, g.units,
                       g.effective_at, g.expires_at, money.label("balance_minor"), units.label("balance_units"))
             .outerjoin(credit_entries, credit_entries.c.grant_id == g.grant_id)
             .where(g.subscription_id == subscription_id)
             .group_by(g.grant_id)
             .order_by(g.priority, g.expires_at.asc().nulls_last(), g.effective_at, g.grant_id))
    if usable_at is not None:
        query = query.where(g.effective_at <= usable_at, sa.or_(g.expires_at.is_(None), g.expires_at > usable_at))
    return [GrantBalance(
        grant_id=r.grant_id, meter_id=r.meter_id, source=r.source, priority=r.priority, currency=r.currency,
        granted_minor=r.amount_minor, remaining_minor=int(r.balance_minor) if r.amount_minor is not None else None,
        granted_units=r.units, remaining_units=Decimal(r.balance_units) if r.units is not None else None,
        effective_at=r.effective_at, expires_at=r.expires_at) for r in conn.execute(query)]

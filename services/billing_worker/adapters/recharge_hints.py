"""Auto-recharge hints from the usage path (issue 15, item 3): once per usage batch, in its transaction.

Credits are consumed when a period is rated at its close; during the period the credit left is estimated the
spend gate's way (`shared.domain.credit_purchase.remaining_in_period`: grants less unbilled usage at the unit
price). One indexed query per batch finds the batch's subscriptions with an enabled auto-recharge and no recharge
pending; for each one below its threshold a `credits.check_recharge` command goes to the outbox, keyed by the
subscription. The worker decides under the subscription's single writer (the partial unique index on pending
recharges is the backstop), so concurrent batches that all see the crossing buy once. The hint's event id is
derived from (subscription, meter, recharges so far, period), so the batches of one crossing write one command.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from services.billing_worker.adapters.cached_subscriptions import CachedSubscriptionSet
from services.billing_worker.adapters.outbox import add_outbox
from shared.adapters.postgres.usage_reads import grant_balances, usage_since
from shared.contracts import topics
from shared.contracts.envelope import new_envelope
from shared.contracts.messages import CheckAutoRecharge
from shared.domain.catalog import Catalog, MeterId
from shared.domain.credit_purchase import remaining_in_period
from shared.domain.ids import IDS
from shared.domain.money import Money

_CANDIDATES = sa.text("""
    SELECT a.subscription_id, a.meter_id, a.threshold_minor, a.currency, s.customer_id, s.plan_id,
           s.current_period_start,
           (SELECT count(*) FROM credit_purchases p WHERE p.subscription_id = a.subscription_id
              AND p.meter_id = a.meter_id AND p.origin = 'auto_recharge') AS recharges
    FROM auto_recharges a JOIN subscriptions s ON s.subscription_id = a.subscription_id
    WHERE a.enabled AND a.subscription_id = ANY(CAST(:subs AS text[])) AND s.status <> 'cancelled'
      AND NOT EXISTS (SELECT 1 FROM credit_purchases p WHERE p.subscription_id = a.subscription_id
                        AND p.meter_id = a.meter_id AND p.status = 'pending' AND p.origin = 'auto_recharge')
""")


_ENABLED = sa.text("SELECT DISTINCT subscription_id FROM auto_recharges WHERE enabled")


class RechargeHints:
    """The usage path's hook: the subscriptions with an enabled auto-recharge are cached (refreshed every
    `refresh_seconds`), so a batch of subscriptions without one costs a set lookup per record and no query.

    # NOTE: a setting enabled a moment ago is seen by the next refresh (the close checks it regardless).
    """

    def __init__(self, catalog_of: Callable[[sa.Connection], Catalog], *, refresh_seconds: float = 5.0) -> None:
        self._catalog_of = catalog_of
        self._enabled = CachedSubscriptionSet(_ENABLED, refresh_seconds=refresh_seconds)

    def __call__(self, conn: sa.Connection, records: Sequence[Any], now: datetime) -> int:
        enabled = self._enabled.current(conn)
        if not enabled:
            return 0
        touched = {r.key.decode() for r in records if r.key in enabled}
        return recharge_hints(conn, touched, now, catalog_of=self._catalog_of) if touched else 0


def recharge_hints(conn: sa.Connection, subscription_ids: Collection[str], now: datetime, *,
                   catalog_of: Callable[[sa.Connection], Catalog]) -> int:
    """Write a `credits.check_recharge` command for each meter of these subscriptions that crossed its
    threshold; returns how many were written."""
    if not subscription_ids:
        return 0
    rows = conn.execute(_CANDIDATES, {"subs": sorted(subscription_ids)}).all()
    if not rows:
        return 0
    catalog = catalog_of(conn)
    written = 0
    for r in rows:
        held = sum(g.remaining_minor or 0 for g in grant_balances(conn, r.subscription_id, usable_at=now)
                   if g.meter_id == r.meter_id and g.currency == r.currency)
        pricing = catalog.plans[r.plan_id].meters.get(MeterId(r.meter_id)) if r.plan_id in catalog.plans else None
        unit_price = pricing.unit_price if pricing is not None and pricing.price is None else None
        unbilled = Decimal(0)
        if unit_price is not None:
            usage = usage_since(conn, r.subscription_id, r.current_period_start)
            unbilled = usage.totals.get(r.meter_id, Decimal(0)) + usage.pending_late.get(r.meter_id, Decimal(0))
        remaining = remaining_in_period(Money(held, r.currency), unbilled, unit_price)
        if remaining.amount_minor >= r.threshold_minor:
            continue
        command = CheckAutoRecharge(subscription_id=r.subscription_id, customer_id=r.customer_id,
                                    meter_id=r.meter_id, seen_remaining_minor=remaining.amount_minor)
        crossing = f"{r.subscription_id}|{r.meter_id}|recharge|{r.recharges}|{r.current_period_start.isoformat()}"
        add_outbox(conn, new_envelope("credits.check_recharge", command.model_dump(mode="json"),
                                      producer="billing-worker", occurred_at=now,
                                      event_id=uuid.uuid5(IDS, crossing)),
                   key=r.subscription_id, topic=topics.COMMANDS)
        written += 1
    return written

"""Spend and low-credit alerts from the usage path (issue 15, item 5): once per usage batch, in its transaction.

The auto-recharge hints' pattern (`recharge_hints.py`): the subscriptions with alert settings are cached
(refreshed every `refresh_seconds`), so a batch touching none of them costs a set lookup per record and no query.
For the batch's subscriptions with settings, the period's spend (usage at the unit price, the spend gate's
estimate) and each watched meter's credit left (`remaining_in_period`) are measured, `shared.domain.alerts`
decides what is due, and each alert is written as a `fired_alerts` row (UNIQUE per subscription, period_start,
kind, meter and threshold: `ON CONFLICT DO NOTHING`) with its billing event in the same transaction.

# NOTE: no command to the subscription's writer here, unlike auto-recharge: an alert changes no billing state,
# and the unique row written with the event in the batch's own transaction already makes it once-only under
# replays and concurrent batches (the second waits on the index, then writes nothing). Meters priced by a model
# (tiers, packages) have no unit price to estimate spend ahead of rating: they do not count towards spend.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from services.billing_worker.adapters.cached_subscriptions import CachedSubscriptionSet
from services.billing_worker.adapters.outbox import add_outbox
from shared.adapters.postgres.schema.alerts import fired_alerts
from shared.adapters.postgres.usage_reads import grant_balances, usage_since
from shared.contracts import topics
from shared.contracts.envelope import new_envelope
from shared.contracts.messages import AlertTriggered, CreditsBalanceLow, Payload
from shared.domain.alerts import AlertDue, AlertKind, AlertSettings, alerts_due
from shared.domain.catalog import Catalog, MeterId
from shared.domain.credit_purchase import remaining_in_period
from shared.domain.ids import IDS
from shared.domain.money import Money, line_amount

_CONFIGURED = sa.text("SELECT subscription_id FROM subscription_alerts")

_CANDIDATES = sa.text("""
    SELECT a.subscription_id, a.spend_thresholds_minor, a.low_credit_balance_minor, s.currency, s.customer_id,
           s.plan_id, s.current_period_start, s.current_period_end
    FROM subscription_alerts a JOIN subscriptions s ON s.subscription_id = a.subscription_id
    WHERE a.subscription_id = ANY(CAST(:subs AS text[])) AND s.status <> 'cancelled'
""")

_FIRED = sa.text("""
    SELECT subscription_id, kind, meter_id, threshold_minor FROM fired_alerts
    WHERE subscription_id = ANY(CAST(:subs AS text[])) AND period_start = :period_start
""")


class AlertHints:
    """The usage path's alert hook (cached set of subscriptions with alert settings, like `RechargeHints`).

    # NOTE: settings stored a moment ago are seen by the next refresh.
    """

    def __init__(self, catalog_of: Callable[[sa.Connection], Catalog], *, refresh_seconds: float = 5.0) -> None:
        self._catalog_of = catalog_of
        self._configured = CachedSubscriptionSet(_CONFIGURED, refresh_seconds=refresh_seconds)

    def __call__(self, conn: sa.Connection, records: Sequence[Any], now: datetime) -> int:
        configured = self._configured.current(conn)
        if not configured:
            return 0
        touched = {r.key.decode() for r in records if r.key in configured}
        return fire_alerts(conn, touched, now, catalog_of=self._catalog_of) if touched else 0

    def after_closes(self, conn: sa.Connection, subscription_ids: set[str], now: datetime) -> int:
        """At a close (once it is written): the credit the close consumed, and the new period re-arms the alerts
        (a low credit still below its threshold fires again for the new period)."""
        configured = self._configured.current(conn)
        touched = {s for s in subscription_ids if s.encode() in configured}
        return fire_alerts(conn, touched, now, catalog_of=self._catalog_of) if touched else 0


def fire_alerts(conn: sa.Connection, subscription_ids: Collection[str], now: datetime, *,
                catalog_of: Callable[[sa.Connection], Catalog]) -> int:
    """Fire the alerts due for these subscriptions in their current period; returns how many fired now."""
    if not subscription_ids:
        return 0
    rows = conn.execute(_CANDIDATES, {"subs": sorted(subscription_ids)}).all()
    if not rows:
        return 0
    catalog = catalog_of(conn)
    fired = 0
    for r in rows:
        settings = AlertSettings.of(r.spend_thresholds_minor, r.low_credit_balance_minor)
        already = {(f.kind, f.meter_id, f.threshold_minor) for f in conn.execute(
            _FIRED, {"subs": [r.subscription_id], "period_start": r.current_period_start})}
        spend, remaining = _measure(conn, catalog, r, settings, now)
        for alert in alerts_due(settings, spend_minor=spend, remaining_minor=remaining, fired=already):
            fired += _fire(conn, r, alert, now)
    return fired


def _measure(conn: sa.Connection, catalog: Catalog, r: Any, settings: AlertSettings, now: datetime
             ) -> tuple[int | None, dict[str, int]]:
    plan = catalog.plans.get(r.plan_id)
    if plan is None:
        return None, {}
    usage = usage_since(conn, r.subscription_id, r.current_period_start)
    spend = Money(0, r.currency)
    for meter_id, meter_pricing in plan.meters.items():
        quantity = usage.totals.get(meter_id, Decimal(0))
        price = meter_pricing.unit_price if meter_pricing.price is None else None
        if price is not None and quantity > 0 and price.currency == r.currency:
            spend += line_amount(quantity, price)
    remaining: dict[str, int] = {}
    if settings.low_credit_balance_minor:
        grants = grant_balances(conn, r.subscription_id, usable_at=now)
        for meter in settings.low_credit_balance_minor:
            held = sum(g.remaining_minor or 0 for g in grants if g.meter_id == meter and g.currency == r.currency)
            pricing = plan.meters.get(MeterId(meter))
            unit_price = pricing.unit_price if pricing is not None and pricing.price is None else None
            unbilled = Decimal(0)
            if unit_price is not None:
                unbilled = usage.totals.get(meter, Decimal(0)) + usage.pending_late.get(meter, Decimal(0))
            remaining[meter] = remaining_in_period(Money(held, r.currency), unbilled, unit_price).amount_minor
    return (spend.amount_minor if settings.spend_thresholds_minor else None), remaining


def _fire(conn: sa.Connection, r: Any, alert: AlertDue, now: datetime) -> int:
    event_id = uuid.uuid5(IDS, f"{r.subscription_id}|alert|{r.current_period_start.isoformat()}|"
                               f"{alert.kind.value}|{alert.meter_id}|{alert.threshold_minor}")
    inserted = conn.execute(insert(fired_alerts).values(
        subscription_id=r.subscription_id, period_start=r.current_period_start, kind=alert.kind.value,
        meter_id=alert.meter_id, threshold_minor=alert.threshold_minor, observed_minor=alert.observed_minor,
        currency=r.currency, customer_id=r.customer_id, event_id=event_id, fired_at=now,
    ).on_conflict_do_nothing().returning(fired_alerts.c.event_id)).first()
    if inserted is None:
        return 0  # fired already in this period (a replay, a concurrent batch)
    payload: Payload
    if alert.kind is AlertKind.SPEND:
        type_, payload = "alert.triggered", AlertTriggered(
            subscription_id=r.subscription_id, customer_id=r.customer_id, amount_minor=alert.observed_minor,
            threshold_minor=alert.threshold_minor, currency=r.currency, period_start=r.current_period_start,
            period_end=r.current_period_end)
    else:
        type_, payload = "credits.balance_low", CreditsBalanceLow(
            subscription_id=r.subscription_id, customer_id=r.customer_id, meter_id=alert.meter_id,
            remaining_minor=alert.observed_minor, threshold_minor=alert.threshold_minor, currency=r.currency,
            period_start=r.current_period_start, period_end=r.current_period_end)
    add_outbox(conn, new_envelope(type_, payload.model_dump(mode="json"), producer="billing-worker",
                                  occurred_at=now, event_id=event_id),
               key=r.subscription_id, topic=topics.BILLING_EVENTS)
    return 1


def chained(*hooks: Callable[[sa.Connection, Sequence[Any], datetime], object]
            ) -> Callable[[sa.Connection, Sequence[Any], datetime], None]:
    """One usage-path hook running several in order (auto-recharge hints, then alerts)."""
    def run(conn: sa.Connection, records: Sequence[Any], now: datetime) -> None:
        for hook in hooks:
            hook(conn, records, now)
    return run

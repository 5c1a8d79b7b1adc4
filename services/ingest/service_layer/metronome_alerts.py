"""Metronome's threshold notifications over our spend and low-credit alerts: create, archive, list a customer's.

A Metronome alert watches one customer's newest live subscription. The enabled alerts of a subscription ARE its
alert settings: each create or archive rewrites the subscription's `subscription_alerts` row from them, with the
alert row and the audit row, in one transaction; the billing worker then evaluates them as usage is materialised
and at the close, firing each once per period (`fired_alerts`, `alert.triggered` / `credits.balance_low`).

| Metronome alert_type | ours |
|---|---|
| `spend_threshold_reached` (threshold in cents) | a spend threshold: the period's usage spend at the unit price |
| `low_credit_balance_reached` (threshold in cents) | a low-credit threshold on the plan's one money-credit meter |
| every other type, `plan_id`, alerts of all customers, filters | not_supported |

# NOTE: the subscription's settings are rewritten from its Metronome alerts, so thresholds set through the native
# `PUT /v1/subscriptions/{id}/alerts` on the same subscription are replaced at the next Metronome create or
# archive (and the native PUT replaces what the Metronome alerts set): a subscription's alerts are managed
# through one of the two APIs.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError

from services.ingest.audit import record
from services.ingest.auth import Principal
from services.ingest.service_layer.refusals import MetronomeRefusal
from shared.adapters.postgres.schema.alerts import fired_alerts, mx_alerts, subscription_alerts
from shared.adapters.postgres.schema.billing import subscriptions
from shared.adapters.postgres.subscription_reads import newest_live_subscription
from shared.domain import alerts
from shared.domain.catalog import Catalog, PlanId, credit_kinds

KINDS = {"spend_threshold_reached": "spend", "low_credit_balance_reached": "low_credit"}


@dataclass(frozen=True)
class NewAlert:
    customer_id: str
    name: str
    alert_type: str
    threshold_minor: int
    currency: str
    billable_metric_id: str | None = None
    uniqueness_key: str | None = None


@dataclass(frozen=True)
class StoredAlert:
    alert_id: str
    customer_id: str
    subscription_id: str
    name: str
    alert_type: str
    kind: str
    meter_id: str
    threshold_minor: int
    currency: str
    uniqueness_key: str | None
    status: str
    updated_at: datetime
    in_alarm: bool | None  # None: archived
    observed_minor: int | None  # what crossed the threshold, when in alarm


def _refused(detail: str, field: str, code: str = "invalid") -> MetronomeRefusal:
    return MetronomeRefusal(detail, code=code, fields=[(field, detail)])


def _credit_meter(catalog: Catalog, plan_id: str, asked: str | None) -> str:
    """The money-credit meter a low-credit alert on this plan watches: its only one, or the one asked."""
    plan = catalog.plans.get(PlanId(plan_id))
    kinds = credit_kinds(catalog)
    money = sorted(str(m) for m in (plan.meters if plan is not None else ()) if kinds.get(m) is False)
    if asked is not None:
        if asked not in money:
            raise _refused(f"billable metric {asked!r} holds no money credit on the customer's plan",
                           "billable_metric_id")
        return asked
    if len(money) != 1:
        raise _refused("a low-credit alert over other than exactly one credit meter of the plan (name one with "
                       "billable_metric_id)", "alert_type", "not_supported")
    return money[0]


def create(engine: sa.Engine, catalog: Catalog, request: NewAlert, *, principal: Principal,
           request_id: str | None) -> str:
    """Store the alert and rewrite its subscription's settings; a used `uniqueness_key` is a conflict."""
    kind = KINDS[request.alert_type]
    alert_id = str(uuid.uuid4())
    with engine.begin() as conn:
        live = conn.execute(newest_live_subscription(request.customer_id, subscriptions.c.subscription_id,
                                                     subscriptions.c.plan_id, subscriptions.c.currency)).first()
        if live is None:
            raise _refused(f"customer {request.customer_id!r} has no live subscription to watch", "customer_id")
        if live.currency != request.currency:
            raise _refused(f"a threshold in {request.currency} on a subscription billed in {live.currency}",
                           "credit_type_id", "not_supported")
        meter = _credit_meter(catalog, live.plan_id, request.billable_metric_id) if kind == "low_credit" else ""
        try:
            with conn.begin_nested():
                conn.execute(mx_alerts.insert().values(
                    alert_id=alert_id, customer_id=request.customer_id, subscription_id=live.subscription_id,
                    name=request.name, alert_type=request.alert_type, kind=kind, meter_id=meter,
                    threshold_minor=request.threshold_minor, currency=live.currency,
                    uniqueness_key=request.uniqueness_key))
        except IntegrityError as exc:
            raise _refused(f"uniqueness_key {request.uniqueness_key!r} was used already", "uniqueness_key",
                           "already_exists") from exc
        _rewrite_settings(conn, live.subscription_id, live.currency)
        record(conn, principal, "metronome.alert.create", customer_id=request.customer_id, request_id=request_id,
               subscription_id=live.subscription_id, alert_id=alert_id, alert_type=request.alert_type,
               threshold_minor=request.threshold_minor)
    return alert_id


def archive(engine: sa.Engine, alert_id: str, release_uniqueness_key: bool, *, principal: Principal,
            authorize: Any, request_id: str | None) -> str:
    with engine.begin() as conn:
        row = conn.execute(sa.select(mx_alerts).where(mx_alerts.c.alert_id == alert_id).with_for_update()).first()
        if row is None:
            raise _refused(f"no alert {alert_id!r}", "id", "not_found")
        authorize(row.customer_id)
        changes: dict[str, Any] = {"status": "archived", "updated_at": sa.func.now()}
        if release_uniqueness_key:
            changes["uniqueness_key"] = None
        conn.execute(sa.update(mx_alerts).where(mx_alerts.c.alert_id == alert_id).values(**changes))
        _rewrite_settings(conn, row.subscription_id, row.currency)
        record(conn, principal, "metronome.alert.archive", customer_id=row.customer_id, request_id=request_id,
               alert_id=alert_id)
    return alert_id


def _rewrite_settings(conn: sa.Connection, subscription_id: str, currency: str) -> None:
    """The subscription's alert settings = its enabled Metronome alerts (see the module's NOTE)."""
    enabled = conn.execute(sa.select(mx_alerts.c.kind, mx_alerts.c.meter_id, mx_alerts.c.threshold_minor)
                           .where(mx_alerts.c.subscription_id == subscription_id,
                                  mx_alerts.c.status == "enabled")).all()
    low: dict[str, int] = {}
    for row in enabled:
        if row.kind == "low_credit":
            if row.meter_id in low and low[row.meter_id] != row.threshold_minor:
                raise _refused(f"meter {row.meter_id} has a low-credit alert already: one threshold per credit meter",
                               "threshold", "not_supported")
            low[row.meter_id] = row.threshold_minor
    try:
        settings = alerts.AlertSettings.of({r.threshold_minor for r in enabled if r.kind == "spend"}, low)
    except alerts.InvalidAlertSettings as exc:
        raise _refused(str(exc), "threshold") from exc
    values = {"spend_thresholds_minor": list(settings.spend_thresholds_minor),
              "low_credit_balance_minor": dict(settings.low_credit_balance_minor), "currency": currency,
              "updated_at": sa.func.now()}
    conn.execute(insert(subscription_alerts).values(subscription_id=subscription_id, **values)
                 .on_conflict_do_update(index_elements=["subscription_id"], set_=values))


def alerts_of(engine: sa.Engine, customer_id: str, statuses: Sequence[str]) -> list[StoredAlert]:
    """The customer's alerts of these statuses by id, each with whether it fired in its subscription's current
    period (in alarm) and what it saw then."""
    fired = fired_alerts.alias("f")
    current = (sa.select(fired.c.observed_minor)
               .select_from(fired.join(subscriptions, subscriptions.c.subscription_id == fired.c.subscription_id))
               .where(fired.c.subscription_id == mx_alerts.c.subscription_id,
                      fired.c.period_start == subscriptions.c.current_period_start,
                      fired.c.kind == mx_alerts.c.kind, fired.c.meter_id == mx_alerts.c.meter_id,
                      fired.c.threshold_minor == mx_alerts.c.threshold_minor)
               .limit(1).scalar_subquery())
    with engine.connect() as conn:
        rows = conn.execute(sa.select(mx_alerts, current.label("observed_minor"))
                            .where(mx_alerts.c.customer_id == customer_id, mx_alerts.c.status.in_(list(statuses)))
                            .order_by(mx_alerts.c.alert_id)).all()
    return [StoredAlert(r.alert_id, r.customer_id, r.subscription_id, r.name, r.alert_type, r.kind, r.meter_id,
                        r.threshold_minor, r.currency, r.uniqueness_key, r.status, r.updated_at,
                        None if r.status == "archived" else r.observed_minor is not None, r.observed_minor)
            for r in rows]

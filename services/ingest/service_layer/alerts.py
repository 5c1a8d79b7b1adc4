"""Spend and low-credit alert settings of a subscription (issue 15, item 5): store and read them.

Settings, not a command: storing them bills nothing, so the edge writes them (like auto-recharge settings) with
their audit row in one transaction; the billing worker reads them as usage is materialised
(`services.billing_worker.adapters.alert_hints`) and fires each alert once per period and threshold.

# NOTE: per subscription, not per customer: spend, credit grants, the plan's prices and the period an alert is
# counted in all belong to a subscription (a customer may hold several in different currencies), and the
# subscription is the worker's partition key, so one batch sees a subscription's usage and its settings.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.dialects.postgresql import insert

from services.ingest.audit import record
from services.ingest.auth import Principal
from services.ingest.service_layer.refusals import InvalidAlertSettings, UnknownSubscription
from shared.adapters.postgres.schema.alerts import subscription_alerts
from shared.adapters.postgres.schema.billing import subscriptions
from shared.domain import alerts
from shared.domain.catalog import Catalog, credit_kinds


class AlertSettingsView(BaseModel):
    subscription_id: str
    spend_thresholds_minor: list[int]
    low_credit_balance_minor: dict[str, int]
    currency: str
    updated_at: datetime | None = None


def set_alerts(engine: sa.Engine, catalog: Catalog, subscription_id: str, spend_thresholds_minor: list[int],
               low_credit_balance_minor: dict[str, int], *, principal: Principal,
               authorize: Callable[[str], None], request_id: str | None) -> AlertSettingsView:
    """Replace the subscription's alert settings (empty lists switch every alert off)."""
    try:
        settings = alerts.AlertSettings.of(spend_thresholds_minor, low_credit_balance_minor)
    except alerts.InvalidAlertSettings as exc:
        raise InvalidAlertSettings(str(exc), fields=[(exc.field, exc.reason)]) from exc
    kinds = credit_kinds(catalog)
    for meter in settings.low_credit_balance_minor:
        if kinds.get(meter, True):  # unknown, or a unit meter: no money credit to watch
            raise InvalidAlertSettings(f"meter {meter} holds no money credit",
                                       fields=[(f"low_credit_balance_minor.{meter}", "not_a_money_meter")])
    with engine.begin() as conn:
        found = conn.execute(sa.select(subscriptions.c.customer_id, subscriptions.c.currency)
                             .where(subscriptions.c.subscription_id == subscription_id)).first()
        if found is None:
            raise UnknownSubscription(f"no subscription {subscription_id!r}", field="subscription_id")
        authorize(found.customer_id)
        values = {"spend_thresholds_minor": list(settings.spend_thresholds_minor),
                  "low_credit_balance_minor": dict(settings.low_credit_balance_minor),
                  "currency": found.currency, "updated_at": sa.func.now()}
        conn.execute(insert(subscription_alerts).values(subscription_id=subscription_id, **values)
                     .on_conflict_do_update(index_elements=["subscription_id"], set_=values))
        record(conn, principal, "subscription.alerts", customer_id=found.customer_id,
               subscription_id=subscription_id, request_id=request_id,
               spend_thresholds_minor=values["spend_thresholds_minor"],
               low_credit_balance_minor=values["low_credit_balance_minor"])
        row = conn.execute(sa.select(subscription_alerts)
                           .where(subscription_alerts.c.subscription_id == subscription_id)).one()
    return AlertSettingsView.model_validate(dict(row._mapping))


def alerts_of(engine: sa.Engine, subscription_id: str, authorize: Callable[[str], None]) -> AlertSettingsView:
    """The subscription's alert settings (none stored: no thresholds)."""
    with engine.connect() as conn:
        found = conn.execute(sa.select(subscriptions.c.customer_id, subscriptions.c.currency)
                             .where(subscriptions.c.subscription_id == subscription_id)).first()
        if found is None:
            raise UnknownSubscription(f"no subscription {subscription_id!r}", field="subscription_id")
        authorize(found.customer_id)
        row = conn.execute(sa.select(subscription_alerts)
                           .where(subscription_alerts.c.subscription_id == subscription_id)).first()
    if row is None:
        return AlertSettingsView(subscription_id=subscription_id, spend_thresholds_minor=[],
                                 low_credit_balance_minor={}, currency=found.currency)
    return AlertSettingsView.model_validate(dict(row._mapping))

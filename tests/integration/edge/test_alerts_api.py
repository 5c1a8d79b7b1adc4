"""Spend and low-credit alerts (issue 15, item 5) through the API and the REAL billing worker (a subprocess).

Hand-computed (Pro: USD 9.00 a month in advance, inference USD 0.000001 a micro-USD with USD 2.00 included; one
unit = 500,000 micro-USD = USD 0.50). Alerts: spend 1.00 and 2.00, low credit on inference below 1.50.
- 1 unit: spend 0.50 (below both), credit left 2.00 - 0.50 = 1.50 (not below 1.50): nothing fires.
- 4 concurrent batches of 1 unit: spend 2.50 crosses 1.00 AND 2.00, credit left 2.00 - 2.50 = -0.50: three
  alerts, each once (alert.triggered x 2, credits.balance_low x 1) whatever batch saw the crossing.
- 1 more unit (spend 3.00) and a replay of the hook on the same period fire nothing more.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from services.billing_worker.adapters.alert_hints import fire_alerts
from services.ingest.container import Container
from shared.adapters.postgres.schema.alerts import fired_alerts
from shared.adapters.postgres.schema.core import outbox
from shared.contracts.webhook_events import public_event

from .conftest import ADMIN, call, onboard, real_worker_settings, until
from .test_credit_purchases_api import UNIT, pay_on_stripe

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def edge_settings(settings):  # type: ignore[no-untyped-def]
    return real_worker_settings(settings, payment_gateway="stripe", auto_recharge_refresh_s=0.0)



def alert_events(container: Container, sid: str) -> list[tuple[str, dict[str, Any]]]:
    with container.engine.connect() as conn:
        rows = conn.execute(sa.select(outbox.c.event_type, outbox.c.envelope)
                            .where(outbox.c.message_key == sid,
                                   outbox.c.event_type.in_(["alert.triggered", "credits.balance_low"]))
                            .order_by(outbox.c.id)).all()
    return [(r.event_type, r.envelope["payload"]) for r in rows]


async def test_spend_and_low_credit_alerts_fire_once_per_threshold_under_concurrent_usage(
        client: httpx.AsyncClient, container: Container, real_worker: Any) -> None:
    customer = await onboard(client, payment_method_id="pm_card_visa")
    cid = customer["customer_id"]
    created = await call(client, "POST", "/v1/subscriptions", {"customer_id": cid, "plan_id": "pro"})
    assert created.status_code == 201, created.text
    sid = created.json()["subscription_id"]
    url = f"/v1/subscriptions/{sid}/alerts"

    assert (await call(client, "GET", url)).json()["spend_thresholds_minor"] == []
    bad = [({"spend_thresholds_minor": [100, 100]}, "spend_thresholds_minor", "duplicate"),
           ({"spend_thresholds_minor": [0]}, "spend_thresholds_minor", "not_positive"),
           ({"low_credit_balance_minor": {"storage": 100}}, "low_credit_balance_minor.storage", "not_a_money_meter")]
    for body, field, reason in bad:
        refused = await client.put(url, json=body, headers=ADMIN)
        assert refused.status_code == 422 and refused.json()["code"] == "invalid_alert_settings", refused.text
        assert refused.json()["errors"] == [{"field": field, "reason": reason}], refused.text
    stored = await client.put(url, json={"spend_thresholds_minor": [200, 100],
                                         "low_credit_balance_minor": {"inference": 150}},
                              headers=ADMIN | {"Idempotency-Key": f"alerts-{sid}"})
    assert stored.status_code == 200, stored.text
    assert (await call(client, "GET", url)).json() | {"updated_at": None} == {
        "subscription_id": sid, "spend_thresholds_minor": [100, 200], "low_credit_balance_minor": {"inference": 150},
        "currency": "USD", "updated_at": None}

    async def ingest(units: int) -> None:
        at = (await call(client, "GET", "/v1/clock")).json()["now"]
        batch = [{"transaction_id": f"tx-{uuid.uuid4().hex[:12]}", "customer_id": cid, "event_type": "inference",
                  "timestamp": at, "properties": {"cost_usd_micros": UNIT}} for _ in range(units)]
        answer = await call(client, "POST", "/v1/ingest", batch)
        assert answer.status_code == 200 and answer.json()["accepted"] == units, answer.text

    async def materialised(units: int) -> bool:
        body = (await call(client, "GET", f"/v1/subscriptions/{sid}/usage")).json()
        meter = next((m for m in body["meters"] if m["meter_id"] == "inference"), None)
        return meter is not None and int(float(meter["quantity"])) == units * UNIT

    await ingest(1)
    await until(lambda: materialised(1), "0.50 of usage")
    await asyncio.sleep(1)
    assert alert_events(container, sid) == []  # spend 0.50, 1.50 left: nothing crossed

    await asyncio.gather(*(ingest(1) for _ in range(4)))
    await until(lambda: materialised(5), "2.50 of usage")

    async def three() -> bool:
        return len(alert_events(container, sid)) >= 3
    await until(three, "the three alerts")
    await ingest(1)
    await until(lambda: materialised(6), "3.00 of usage")
    await asyncio.sleep(1)  # time for a (wrong) second firing to show
    with container.engine.begin() as conn:  # the hook replayed on the same period writes nothing
        assert fire_alerts(conn, {sid}, datetime.fromisoformat((await call(client, "GET", "/v1/clock")).json()["now"]),
                           catalog_of=lambda _conn: container.current_catalog()) == 0

    events = alert_events(container, sid)
    spend = sorted((p["threshold_minor"], p["currency"]) for t, p in events if t == "alert.triggered")
    low = [(p["meter_id"], p["threshold_minor"], p["remaining_minor"]) for t, p in events
           if t == "credits.balance_low"]
    assert spend == [(100, "USD"), (200, "USD")]
    assert all(p["amount_minor"] >= p["threshold_minor"] for t, p in events if t == "alert.triggered")
    assert len(low) == 1 and low[0][:2] == ("inference", 150) and low[0][2] < 150
    assert {public_event(t, p) for t, p in events} == {"alert.triggered", "credits.balance_low"}
    with container.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(fired_alerts)
                            .where(fired_alerts.c.subscription_id == sid)).scalar() == 3
    assert real_worker.poll() is None, "the worker exited"


async def test_the_close_evaluates_the_alerts_of_the_new_period_once(
        client: httpx.AsyncClient, container: Container, real_worker: Any) -> None:
    """The first invoice paid (the subscription active). Low credit below 2.50 on inference, no usage: nothing
    fires in the first period (no usage batch). The close (the billing clock moved 31 days) grants the new
    period's 2.00 of inference: 2.00 < 2.50 fires credits.balance_low once for the NEW period (the close re-arms
    the alerts), with 2.00 left. Failed before the close evaluated alerts (timed out)."""
    customer = await onboard(client, payment_method_id="pm_card_visa")
    cid = customer["customer_id"]
    created = await call(client, "POST", "/v1/subscriptions", {"customer_id": cid, "plan_id": "pro"})
    assert created.status_code == 201, created.text
    sid = created.json()["subscription_id"]
    stored = await client.put(f"/v1/subscriptions/{sid}/alerts", json={"low_credit_balance_minor": {"inference": 250}},
                              headers=ADMIN)
    assert stored.status_code == 200, stored.text
    first_end = created.json()["current_period_end"]
    [first] = (await call(client, "GET", f"/v1/customers/{cid}/invoices")).json()["data"]
    await pay_on_stripe(client, container.settings.stripe_webhook_secret.get_secret_value(), first)  # active
    assert alert_events(container, sid) == []

    moved = await call(client, "POST", "/v1/clock/advance", {"seconds": 31 * 86_400 + 60})
    assert moved.status_code == 200, moved.text

    async def fired() -> list[tuple[str, dict[str, Any]]]:
        return alert_events(container, sid)
    [(type_, payload)] = await until(fired, "the low-credit alert at the close")
    await asyncio.sleep(1)
    assert len(alert_events(container, sid)) == 1
    assert (type_, payload["meter_id"], payload["threshold_minor"], payload["remaining_minor"]) == (
        "credits.balance_low", "inference", 250, 200)
    assert datetime.fromisoformat(payload["period_start"]) == datetime.fromisoformat(first_end)

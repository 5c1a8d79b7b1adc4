"""Metronome's threshold notifications through the official SDK and the REAL worker: spend alerts become the
subscription's spend thresholds, the worker fires the one the usage crosses (a SUM metric at 5 cents a call, 30
calls then empty batches (0 calls) until the worker has read the new settings: 150 cents:
the 100-cent alert is in alarm, the 1000-cent one is not), archive and uniqueness keys behave as Metronome's,
and an alert type the engine cannot evaluate is `not_supported`."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import metronome
import pytest

from .conftest import eventually

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def watched(edge_url: str, real_worker: Any) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    with metronome.Metronome(bearer_token="test-admin-key", base_url=f"{edge_url}/metronome",
                             max_retries=0) as client, \
            httpx.Client(base_url=edge_url, headers={"Authorization": "Bearer test-admin-key"}, timeout=90) as native:
        calls = client.v1.billable_metrics.create(
            name="Calls", aggregation_type="SUM", aggregation_key="calls",
            event_type_filter={"in_values": [f"al_call_{tag}"]}).data.id
        plan = native.post("/v1/plans", json={"id": f"al_{tag}", "name": "Alerted", "family": "al", "interval": "month",
                                              "currency": "USD", "price": "0",
                                              "meters": {calls: {"unit_price": "0.05", "overage": "bill"}}})
        assert plan.status_code == 201, plan.text
        customer = client.v1.customers.create(name="Alerted Org", external_id=f"al-org-{tag}").data.id
        subscribed = native.post("/v1/subscriptions", json={"customer_id": customer, "plan_id": f"al_{tag}",
                                                            "payment_method_id": "pm_card_visa"})
        assert subscribed.status_code == 201, subscribed.text
    return {"customer": customer, "tag": tag, "subscription": subscribed.json()["subscription_id"],
            "start": datetime.fromisoformat(subscribed.json()["current_period_start"])}


def test_spend_alerts_fire_through_the_worker_when_usage_crosses_them(
        metronome_client: metronome.Metronome, native: httpx.Client, watched: dict[str, Any]) -> None:
    customer, tag = watched["customer"], watched["tag"]
    low = metronome_client.v1.alerts.create(alert_type="spend_threshold_reached", name="1 dollar", threshold=100,
                                            customer_id=customer, credit_type_id="2714e483-4ff1-48e4-9e25-ac732e8f24f2",
                                            uniqueness_key=f"low-{tag}").data.id
    high = metronome_client.v1.alerts.create(alert_type="spend_threshold_reached", name="10 dollars", threshold=1000,
                                             customer_id=customer).data.id
    settings = native.get(f"/v1/subscriptions/{watched['subscription']}/alerts").json()
    assert settings["spend_thresholds_minor"] == [100, 1000]
    listed = {a.alert.id: a for a in metronome_client.v1.customers.alerts.list(customer_id=customer)}
    assert {i: (a.alert.name, a.alert.threshold, a.alert.status, a.customer_status) for i, a in listed.items()} == {
        low: ("1 dollar", 100, "enabled", "ok"), high: ("10 dollars", 1000, "enabled", "ok")}

    now = datetime.fromisoformat(native.get("/v1/clock").json()["now"])
    at = max(now - timedelta(minutes=1), watched["start"])

    def calls(count: int) -> None:
        metronome_client.v1.usage.ingest(usage=[{"transaction_id": f"tx-{uuid.uuid4().hex}", "customer_id": customer,
                                                 "event_type": f"al_call_{tag}", "timestamp": at.isoformat(),
                                                 "properties": {"calls": count}}])
    calls(30)

    def fired() -> dict[str, Any] | None:
        found = {a.alert.id: a for a in metronome_client.v1.customers.alerts.list(customer_id=customer)}
        if found[low].customer_status == "in_alarm":
            return found
        calls(0)  # the worker reads new alert settings within 5 s: a batch that adds nothing evaluates them again
        return None
    found = eventually(fired, "the 100-cent spend alert in alarm")
    assert found[low].triggered_by == "spend 150 reached 100"
    assert found[high].customer_status == "ok"


def test_archive_hides_an_alert_and_can_release_its_uniqueness_key(metronome_client: metronome.Metronome,
                                                                  native: httpx.Client,
                                                                  watched: dict[str, Any]) -> None:
    customer, key = watched["customer"], f"arch-{uuid.uuid4().hex[:8]}"
    first = metronome_client.v1.alerts.create(alert_type="spend_threshold_reached", name="once", threshold=5000,
                                              customer_id=customer, uniqueness_key=key).data.id
    with pytest.raises(metronome.ConflictError) as caught:
        metronome_client.v1.alerts.create(alert_type="spend_threshold_reached", name="twice", threshold=6000,
                                          customer_id=customer, uniqueness_key=key)
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "already_exists"

    assert metronome_client.v1.alerts.archive(id=first, release_uniqueness_key=True).data.id == first
    assert first not in [a.alert.id for a in metronome_client.v1.customers.alerts.list(customer_id=customer)]
    [archived] = [a for a in metronome_client.v1.customers.alerts.list(customer_id=customer,
                                                                       alert_statuses=["ARCHIVED"])
                  if a.alert.id == first]
    assert (archived.alert.status, archived.customer_status) == ("archived", None)
    assert 5000 not in native.get(f"/v1/subscriptions/{watched['subscription']}/alerts").json()[
        "spend_thresholds_minor"]
    again = metronome_client.v1.alerts.create(alert_type="spend_threshold_reached", name="again", threshold=6000,
                                              customer_id=customer, uniqueness_key=key).data.id
    assert again != first


@pytest.mark.parametrize(("fields", "field"), [
    ({"alert_type": "usage_threshold_reached", "billable_metric_id": "bm_x"}, "alert_type"),
    ({"alert_type": "spend_threshold_reached", "plan_id": "plan_x"}, "plan_id"),
])
def test_an_alert_the_engine_cannot_evaluate_is_not_supported(metronome_client: metronome.Metronome,
                                                              watched: dict[str, Any], fields: dict[str, Any],
                                                              field: str) -> None:
    with pytest.raises(metronome.BadRequestError) as caught:
        metronome_client.v1.alerts.create(name="refused", threshold=100, customer_id=watched["customer"],
                                          **fields)
    assert isinstance(caught.value.body, dict)
    assert (caught.value.body["code"], caught.value.body["errors"][0]["field"]) == ("not_supported", field)


def test_a_low_credit_alert_watches_the_plans_money_credit_and_fires_below_its_threshold(
        metronome_client: metronome.Metronome, native: httpx.Client) -> None:
    """Pro includes USD 2.00 of inference credit; 1,000,000 micro-USD of inference (USD 1.00) leaves 100 cents,
    below the 150-cent alert."""
    customer = metronome_client.v1.customers.create(name="Credit Org", external_id=f"cr-{uuid.uuid4().hex[:8]}").data.id
    subscribed = native.post("/v1/subscriptions", json={"customer_id": customer, "plan_id": "pro",
                                                        "payment_method_id": "pm_card_visa"})
    assert subscribed.status_code == 201, subscribed.text
    alert = metronome_client.v1.alerts.create(alert_type="low_credit_balance_reached", name="credit low",
                                              threshold=150, customer_id=customer).data.id
    settings = native.get(f"/v1/subscriptions/{subscribed.json()['subscription_id']}/alerts").json()
    assert settings["low_credit_balance_minor"] == {"inference": 150}

    now = datetime.fromisoformat(native.get("/v1/clock").json()["now"])

    def inference(micros: int) -> None:
        metronome_client.v1.usage.ingest(usage=[{"transaction_id": f"tx-{uuid.uuid4().hex}", "customer_id": customer,
                                                 "event_type": "inference", "timestamp": now.isoformat(),
                                                 "properties": {"cost_usd_micros": micros}}])
    inference(1_000_000)

    def in_alarm() -> Any:
        [found] = metronome_client.v1.customers.alerts.list(customer_id=customer).data
        if found.customer_status == "in_alarm":
            return found
        inference(0)  # see the spend test: an empty batch evaluates the settings the worker has read since
        return None
    found = eventually(in_alarm, "the low-credit alert in alarm")
    assert (found.alert.id, found.alert.type, found.triggered_by) == (
        alert, "low_credit_balance_reached", "credit left 100 below 150")

"""Metronome's usage calls through the official SDK and the REAL worker: events sent under a customer's ingest
alias (through `/metronome/v1/ingest`) and under its external id (through the native `/v1/ingest`) are
attributed to it, and `usage.list` / `usage.list_with_groups` read them back per window, per metric and per
group value.

Hand-computed: on day 1 (UTC) 3 calls at 01:00 and 1 at 03:00, tokens 100 of model a and 50 of model b at
01:00; on day 2 2 calls and 25 tokens of model a at 02:00. DAY windows: calls 4 | 2, tokens 150 | 25 (a 100,
b 50 | a 25, b none); NONE: calls 6, tokens 175; HOUR of day 1: 3 calls at 01:00, 1 at 03:00, 0 elsewhere."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import metronome
import pytest

from .conftest import eventually

pytestmark = pytest.mark.integration


def _event(customer: str, event_type: str, at: datetime, **properties: Any) -> dict[str, Any]:
    return {"transaction_id": f"tx-{uuid.uuid4().hex}", "customer_id": customer, "event_type": event_type,
            "timestamp": at.isoformat(), "properties": properties}


@pytest.fixture(scope="module")
def scenario(edge_url: str, real_worker: Any) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    with metronome.Metronome(bearer_token="test-admin-key", base_url=f"{edge_url}/metronome",
                             max_retries=0) as client, \
            httpx.Client(base_url=edge_url, headers={"Authorization": "Bearer test-admin-key"}, timeout=90) as native:
        calls = client.v1.billable_metrics.create(
            name="Calls", aggregation_type="COUNT", event_type_filter={"in_values": [f"call_{tag}"]}).data.id
        tokens = client.v1.billable_metrics.create(
            name="Tokens", aggregation_type="SUM", aggregation_key="tokens", group_keys=[["model"]],
            event_type_filter={"in_values": [f"inference_{tag}"]}).data.id
        plan = native.post("/v1/plans", json={
            "id": f"usage_{tag}", "name": "Usage", "family": "usage", "interval": "month", "currency": "USD",
            "price": "0", "meters": {calls: {"unit_price": "0.01", "overage": "bill"},
                                     tokens: {"unit_price": "0.001", "overage": "bill"}}})
        assert plan.status_code == 201, plan.text
        customer = client.v1.customers.create(name="Usage Org", external_id=f"usage-org-{tag}",
                                              ingest_aliases=[f"hf-{tag}"]).data
        subscribed = native.post("/v1/subscriptions", json={"customer_id": customer.id, "plan_id": f"usage_{tag}"})
        assert subscribed.status_code == 201, subscribed.text
        started = datetime.fromisoformat(subscribed.json()["current_period_start"])
        day1 = started.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
        day2 = day1 + timedelta(days=1)
        now = datetime.fromisoformat(native.get("/v1/clock").json()["now"])
        moved = native.post("/v1/clock/advance", json={"seconds": int((day2 + timedelta(hours=3) - now)
                                                                      .total_seconds())})
        assert moved.status_code == 200, moved.text

        alias = f"hf-{tag}"
        client.v1.usage.ingest(usage=[
            *[_event(alias, f"call_{tag}", day1 + timedelta(hours=1)) for _ in range(3)],
            _event(alias, f"inference_{tag}", day1 + timedelta(hours=1), tokens=100, model="a"),
            _event(alias, f"inference_{tag}", day1 + timedelta(hours=1, minutes=30), tokens=50, model="b"),
            *[_event(alias, f"call_{tag}", day2 + timedelta(hours=2)) for _ in range(2)],
            _event(alias, f"inference_{tag}", day2 + timedelta(hours=2), tokens=25, model="a")])
        by_external_id = native.post("/v1/ingest", json=[_event(f"usage-org-{tag}", f"call_{tag}",
                                                                day1 + timedelta(hours=3))])
        assert by_external_id.json()["accepted"] == 1, by_external_id.text

        def all_materialised() -> list[Any] | None:
            rows = client.v1.usage.list(starting_on=day1, ending_before=day1 + timedelta(days=2), window_size="NONE",
                                        customer_ids=[customer.id]).data
            return rows if {(r.billable_metric_id, r.value) for r in rows} == {(calls, 6), (tokens, 175)} else None
        eventually(all_materialised, "the 9 events materialised by the worker")
    return {"customer": customer.id, "calls": calls, "tokens": tokens, "day1": day1}


def test_usage_under_an_alias_and_the_external_id_is_listed_per_day_and_per_metric(
        metronome_client: metronome.Metronome, scenario: dict[str, Any]) -> None:
    day1, calls, tokens = scenario["day1"], scenario["calls"], scenario["tokens"]
    rows = metronome_client.v1.usage.list(
        starting_on=day1, ending_before=day1 + timedelta(days=2), window_size="DAY",
        customer_ids=[scenario["customer"]],
        billable_metrics=[{"id": calls}, {"id": tokens, "group_by": {"key": "model", "values": ["a", "b"]}}]).data
    shown = [(r.billable_metric_id, r.start_timestamp, r.end_timestamp, r.value, r.groups) for r in rows]
    expected = [(calls, day1, day1 + timedelta(days=1), 4, None),
                (calls, day1 + timedelta(days=1), day1 + timedelta(days=2), 2, None),
                (tokens, day1, day1 + timedelta(days=1), 150, {"a": 100, "b": 50}),
                (tokens, day1 + timedelta(days=1), day1 + timedelta(days=2), 25, {"a": 25, "b": None})]
    assert sorted(shown, key=lambda r: (r[0], r[1])) == sorted(expected, key=lambda r: (r[0], r[1]))
    assert {r.customer_id for r in rows} == {scenario["customer"]}
    assert {r.billable_metric_name for r in rows} == {"Calls", "Tokens"}


def test_hour_windows_place_each_event_in_its_hour(metronome_client: metronome.Metronome,
                                                   scenario: dict[str, Any]) -> None:
    day1 = scenario["day1"]
    rows = metronome_client.v1.usage.list(starting_on=day1, ending_before=day1 + timedelta(days=1),
                                          window_size="HOUR", customer_ids=[scenario["customer"]],
                                          billable_metrics=[{"id": scenario["calls"]}]).data
    assert len(rows) == 24
    assert {(r.start_timestamp - day1).seconds // 3600: r.value for r in rows if r.value} == {1: 3, 3: 1}


def test_usage_groups_follow_next_page_one_group_value_per_row(metronome_client: metronome.Metronome,
                                                               scenario: dict[str, Any]) -> None:
    day1 = scenario["day1"]
    first = metronome_client.v1.usage.list_with_groups(
        billable_metric_id=scenario["tokens"], customer_id=scenario["customer"], window_size="DAY",
        starting_on=day1, ending_before=day1 + timedelta(days=2), group_key=["model"], limit=1)
    assert len(first.data) == 1 and first.next_page
    rows = [(r.starting_on, r.group_value, r.group, r.value) for r in metronome_client.v1.usage.list_with_groups(
        billable_metric_id=scenario["tokens"], customer_id=scenario["customer"], window_size="DAY",
        starting_on=day1, ending_before=day1 + timedelta(days=2), group_key=["model"], limit=1)]
    assert rows == [(day1, "a", {"model": "a"}, 100), (day1, "b", {"model": "b"}, 50),
                    (day1 + timedelta(days=1), "a", {"model": "a"}, 25)]


def test_grouping_by_a_key_the_metric_does_not_group_is_not_supported(metronome_client: metronome.Metronome,
                                                                      scenario: dict[str, Any]) -> None:
    day1 = scenario["day1"]
    with pytest.raises(metronome.BadRequestError) as caught:
        metronome_client.v1.usage.list_with_groups(
            billable_metric_id=scenario["tokens"], customer_id=scenario["customer"], window_size="DAY",
            starting_on=day1, ending_before=day1 + timedelta(days=1), group_key=["region"])
    assert isinstance(caught.value.body, dict)
    assert (caught.value.body["code"], caught.value.body["errors"][0]["field"]) == ("not_supported", "group_key")


def test_bounds_off_utc_midnight_are_metronomes_bad_request(metronome_client: metronome.Metronome,
                                                            scenario: dict[str, Any]) -> None:
    with pytest.raises(metronome.BadRequestError) as caught:
        metronome_client.v1.usage.list(starting_on=scenario["day1"] + timedelta(hours=5),
                                       ending_before=scenario["day1"] + timedelta(days=1), window_size="DAY")
    assert isinstance(caught.value.body, dict) and caught.value.body["errors"][0]["field"] == "starting_on"

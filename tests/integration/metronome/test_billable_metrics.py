"""Metronome's billable metrics through the official SDK: create (COUNT, SUM with a group key) as our meters,
retrieve, list across pages, archive, a customer's metrics (those its plan prices); what a meter cannot
express is the SDK's BadRequestError with code `not_supported`."""

from __future__ import annotations

import uuid

import httpx
import metronome
import pytest

pytestmark = pytest.mark.integration


def _tag() -> str:
    return uuid.uuid4().hex[:8]


def test_count_and_sum_metrics_read_back_as_metronome_billable_metrics(metronome_client: metronome.Metronome) -> None:
    tag = _tag()
    calls = metronome_client.v1.billable_metrics.create(
        name="API calls", aggregation_type="COUNT", event_type_filter={"in_values": [f"api_call_{tag}"]}).data.id
    tokens = metronome_client.v1.billable_metrics.create(
        name="Tokens", aggregation_type="SUM", aggregation_key="tokens",
        event_type_filter={"in_values": [f"inference_{tag}"]},
        property_filters=[{"name": "tokens", "exists": True}, {"name": "model", "exists": True}],
        group_keys=[["model"]]).data.id

    counted = metronome_client.v1.billable_metrics.retrieve(billable_metric_id=calls).data
    assert (counted.id, counted.name, counted.aggregation_type, counted.aggregation_key) == (
        calls, "API calls", "COUNT", None)
    assert counted.event_type_filter is not None and counted.event_type_filter.in_values == [f"api_call_{tag}"]
    summed = metronome_client.v1.billable_metrics.retrieve(billable_metric_id=tokens).data
    assert (summed.aggregation_type, summed.aggregation_key, summed.group_keys) == ("SUM", "tokens", [["model"]])
    assert summed.archived_at is None


def test_the_list_pages_and_an_archived_metric_is_listed_only_when_asked(
        metronome_client: metronome.Metronome) -> None:
    tag = _tag()
    ids = [metronome_client.v1.billable_metrics.create(
        name=f"Metric {i}", aggregation_type="COUNT", event_type_filter={"in_values": [f"ev_{tag}_{i}"]}).data.id
        for i in range(3)]
    first = metronome_client.v1.billable_metrics.list(limit=1)
    assert len(first.data) == 1 and first.next_page
    every = [m.id for m in metronome_client.v1.billable_metrics.list(limit=2)]  # follows next_page
    assert set(ids) <= set(every) and every == sorted(every)

    assert metronome_client.v1.billable_metrics.archive(id=ids[0]).data.id == ids[0]
    assert ids[0] not in [m.id for m in metronome_client.v1.billable_metrics.list()]
    archived = [m for m in metronome_client.v1.billable_metrics.list(include_archived=True) if m.id == ids[0]]
    assert len(archived) == 1 and archived[0].archived_at is not None


def test_a_customers_metrics_are_those_its_plan_prices(metronome_client: metronome.Metronome,
                                                       native: httpx.Client) -> None:
    tag = _tag()
    priced = metronome_client.v1.billable_metrics.create(
        name="Priced", aggregation_type="COUNT", event_type_filter={"in_values": [f"priced_{tag}"]}).data.id
    metronome_client.v1.billable_metrics.create(
        name="Not priced", aggregation_type="COUNT", event_type_filter={"in_values": [f"other_{tag}"]})
    plan = native.post("/v1/plans", json={"id": f"plan_{tag}", "name": "Metered", "family": "m", "interval": "month",
                                          "currency": "USD", "price": "0",
                                          "meters": {priced: {"unit_price": "0.10", "overage": "bill"}}})
    assert plan.status_code == 201, plan.text
    cid = metronome_client.v1.customers.create(name="Metered Org", external_id=f"metered-{tag}").data.id
    assert metronome_client.v1.customers.list_billable_metrics(customer_id=cid).data == []  # no plan yet
    subscribed = native.post("/v1/subscriptions", json={"customer_id": cid, "plan_id": f"plan_{tag}"})
    assert subscribed.status_code == 201, subscribed.text

    listed = metronome_client.v1.customers.list_billable_metrics(customer_id=cid).data
    assert [(m.id, m.name) for m in listed] == [(priced, "Priced")]


@pytest.mark.parametrize(("fields", "field"), [
    ({"aggregation_type": "MAX", "aggregation_key": "latency"}, "aggregation_type"),
    ({"aggregation_type": "COUNT", "sql": "select 1"}, "sql"),
    ({"aggregation_type": "COUNT", "property_filters": [{"name": "region", "in_values": ["eu"]}]},
     "property_filters.0"),
])
def test_what_a_meter_cannot_express_is_refused_as_not_supported(
        metronome_client: metronome.Metronome, fields: dict[str, object], field: str) -> None:
    with pytest.raises(metronome.BadRequestError) as caught:
        metronome_client.v1.billable_metrics.create(name="Refused", event_type_filter={"in_values": ["x"]},
                                                    **fields)  # type: ignore[arg-type]
    body = caught.value.body
    assert isinstance(body, dict)
    assert (body["code"], body["errors"][0]["field"]) == ("not_supported", field)


def test_an_unknown_metric_is_the_sdks_not_found_error(metronome_client: metronome.Metronome) -> None:
    with pytest.raises(metronome.NotFoundError) as caught:
        metronome_client.v1.billable_metrics.retrieve(billable_metric_id="bm_nothing")
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "not_found"

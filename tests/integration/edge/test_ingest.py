"""Usage ingest against real Kafka: mixed valid / invalid events, limits, parking and replay."""

from __future__ import annotations

import uuid
from datetime import timedelta

import orjson
import pytest

from shared.contracts import topics
from shared.contracts.envelope import Envelope
from shared.contracts.messages import UsageRecorded, parse_payload

from .conftest import ADMIN, START, bearer, consume, new_key, onboard, subscribe

pytestmark = pytest.mark.integration


def event(customer_id: str, **overrides):  # type: ignore[no-untyped-def]
    return {"transaction_id": f"tx-{uuid.uuid4().hex[:12]}", "customer_id": customer_id, "event_type": "inference",
            "timestamp": (START - timedelta(hours=1)).isoformat(), "properties": {"cost_usd_micros": 1500},
            **overrides}


async def test_a_mixed_batch_gets_one_result_per_event_and_only_valid_events_reach_kafka(
        client, worker, edge_settings):
    customer = await onboard(client, aliases=[f"alias-{uuid.uuid4().hex[:6]}"])
    sub = await subscribe(client, customer["customer_id"], "pro")
    alias = customer["aliases"][0]
    batch = [
        event(customer["customer_id"]),
        event(alias, event_type="storage_usage", properties={"gb_months": "0.684931"}),
        event(customer["customer_id"], timestamp=(START - timedelta(days=35)).isoformat()),
        event(customer["customer_id"], timestamp=(START + timedelta(minutes=6)).isoformat()),
        event(customer["customer_id"], event_type="report_generated"),
        event(customer["customer_id"], properties={"cost_usd_micros": -5}),
        event(customer["customer_id"], properties={"tokens": 3}),
        {"transaction_id": "tx-bad", "customer_id": customer["customer_id"], "event_type": "inference"},
        event(customer["customer_id"], timestamp="2026-03-10T10:00:00"),
    ]

    response = await client.post("/v1/ingest", json=batch, headers=ADMIN)

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["accepted"], body["rejected"], body["parked"]) == (2, 7, 0)
    assert [r["reason"] for r in body["results"]] == [
        None, None, "timestamp_too_old", "timestamp_in_future", "unknown_event_type", "invalid_property",
        "missing_property", "invalid_event", "invalid_event"]
    assert body["results"][7]["errors"] == [{"field": "timestamp", "reason": "Field required"}]

    messages = consume(edge_settings, topics.USAGE, 2)
    assert {m.key().decode() for m in messages} == {sub["subscription_id"]}
    payloads = [parse_payload(Envelope.from_bytes(m.value())) for m in messages]
    assert all(isinstance(p, UsageRecorded) for p in payloads)
    assert {p.transaction_id for p in payloads} == {batch[0]["transaction_id"], batch[1]["transaction_id"]}
    assert {p.customer_id for p in payloads} == {customer["customer_id"]}


async def test_resending_a_batch_produces_the_same_event_ids(client, worker, edge_settings):
    customer = await onboard(client)
    await subscribe(client, customer["customer_id"], "pro")
    batch = [event(customer["customer_id"])]
    for _ in range(2):
        assert (await client.post("/v1/ingest", json=batch, headers=ADMIN)).json()["accepted"] == 1

    mine = [Envelope.from_bytes(m.value()) for m in consume(edge_settings, topics.USAGE, 100, timeout=5)]
    ids = {e.event_id for e in mine if e.payload["transaction_id"] == batch[0]["transaction_id"]}
    assert len(ids) == 1


async def test_usage_of_a_customer_without_a_live_subscription_is_refused_with_a_reason(client):
    customer = await onboard(client)
    response = await client.post("/v1/ingest", json=[event(customer["customer_id"])], headers=ADMIN)

    assert response.json()["results"][0]["reason"] == "no_active_subscription"


async def test_batch_size_and_request_size_limits_are_explicit(client, container):
    empty = await client.post("/v1/ingest", json=[], headers=ADMIN)
    too_many = await client.post("/v1/ingest", json=[event("c")] * 1001, headers=ADMIN)
    huge = await client.post("/v1/ingest", content=b"[" + b" " * container.settings.max_request_bytes + b"]",
                             headers={**ADMIN, "content-type": "application/json"})
    not_json = await client.post("/v1/ingest", content=b"{oops", headers=ADMIN)

    assert (empty.status_code, too_many.status_code, huge.status_code, not_json.status_code) == (422, 422, 413, 400)
    assert too_many.json()["type"] == "/problems/batch-size"
    assert huge.headers["content-type"] == "application/problem+json"


async def test_events_of_an_unknown_customer_are_parked_listed_and_replayed_once_it_exists(
        client, worker, edge_settings):
    external_ref = f"late-{uuid.uuid4().hex[:8]}"
    parked = await client.post("/v1/ingest", json=[event(external_ref), event(external_ref)], headers=ADMIN)
    assert parked.json()["parked"] == 2
    assert {r["reason"] for r in parked.json()["results"]} == {"unknown_customer"}

    listed = await client.get("/v1/usage/unmatched", params={"customer_ref": external_ref, "limit": 1},
                              headers=ADMIN)
    assert len(listed.json()["data"]) == 1 and listed.json()["next_cursor"] is not None
    too_early = await client.post("/v1/usage/unmatched/replay", json={"customer_ref": external_ref}, headers=ADMIN)
    assert too_early.status_code == 409

    customer = await onboard(client, aliases=[external_ref])
    sub = await subscribe(client, customer["customer_id"], "pro")
    replayed = await client.post("/v1/usage/unmatched/replay", json={"customer_ref": external_ref}, headers=ADMIN)

    assert replayed.status_code == 200 and replayed.json()["replayed"] == 2
    keys = [m.key().decode() for m in consume(edge_settings, topics.USAGE, 200, timeout=5)]
    assert keys.count(sub["subscription_id"]) == 2
    after = await client.get("/v1/usage/unmatched", params={"customer_ref": external_ref}, headers=ADMIN)
    assert after.json()["data"] == []


async def test_an_org_bound_ingest_key_cannot_report_usage_for_another_org(client, worker):
    org_a, org_b = await onboard(client), await onboard(client)
    await subscribe(client, org_b["customer_id"], "pro")
    key_a = await new_key(client, ["ingest"], org_id=org_a["customer_id"])

    response = await client.post("/v1/ingest", json=[event(org_b["customer_id"])], headers=bearer(key_a))

    assert response.status_code == 403


async def test_a_producer_key_reports_usage_for_any_customer(client, worker):
    customer = await onboard(client)
    await subscribe(client, customer["customer_id"], "pro")
    producer_key = await new_key(client, ["ingest"], producer="inference-gateway")

    response = await client.post("/v1/ingest", content=orjson.dumps([event(customer["customer_id"])]),
                                 headers={**bearer(producer_key), "content-type": "application/json"})

    assert response.json()["accepted"] == 1

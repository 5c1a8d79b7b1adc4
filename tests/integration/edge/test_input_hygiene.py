"""What the schemathesis run found, pinned as API tests: NUL characters, non-ASCII ids, bad cursors."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from .conftest import ADMIN, START, onboard, subscribe

pytestmark = pytest.mark.integration


async def test_a_nul_character_in_a_path_query_or_body_is_a_422_naming_where(client):
    in_path = await client.get("/v1/customers/cust%00x", headers=ADMIN)
    in_query = await client.get("/v1/customers", params={"cursor": "a\x00"}, headers=ADMIN)
    in_body = await client.post("/v1/api-keys", json={"name": "a\x00", "scopes": ["admin"]}, headers=ADMIN)

    assert (in_path.status_code, in_query.status_code, in_body.status_code) == (422, 422, 422)
    assert in_body.json()["errors"] == [{"field": "name", "reason": "contains U+0000"}]
    assert in_path.headers["content-type"] == "application/problem+json"


async def test_a_nul_character_in_one_usage_event_rejects_that_event_only(client, worker):
    customer = await onboard(client)
    await subscribe(client, customer["customer_id"], "pro")
    at = (START - timedelta(minutes=5)).isoformat()
    good = {"transaction_id": f"tx-{uuid.uuid4().hex[:8]}", "customer_id": customer["customer_id"],
            "event_type": "inference", "timestamp": at, "properties": {"cost_usd_micros": 10}}

    response = await client.post("/v1/ingest", headers=ADMIN, json=[
        good, {**good, "transaction_id": "tx\x00"}, {**good, "transaction_id": "tx-2", "properties": {
            "cost_usd_micros": 1, "model": "m\x00"}}])

    assert [r["status"] for r in response.json()["results"]] == ["accepted", "rejected", "rejected"]
    assert [r["reason"] for r in response.json()["results"][1:]] == ["invalid_event", "invalid_property"]


async def test_an_external_id_outside_ascii_onboards_with_its_stripe_customer(client):
    external_id = f"société-{uuid.uuid4().hex[:6]}-Ā"

    first = await onboard(client, external_id)
    again = await onboard(client, external_id)

    assert first["stripe_customer_id"] and again["stripe_customer_id"] == first["stripe_customer_id"]


async def test_integer_cursors_that_are_not_ours_are_a_422(client):
    customer = await onboard(client)

    audit = await client.get(f"/v1/customers/{customer['customer_id']}/audit", params={"cursor": "YWJj"},
                             headers=ADMIN)
    unmatched = await client.get("/v1/usage/unmatched", params={"cursor": "YWJj"}, headers=ADMIN)

    assert (audit.status_code, unmatched.status_code) == (422, 422)

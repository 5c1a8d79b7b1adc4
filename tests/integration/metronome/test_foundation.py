"""The `/metronome` surface's foundation through the official SDK: bearer auth with our API keys and scopes,
errors raised as the SDK's own exceptions carrying our problem detail, and usage ingest."""

from __future__ import annotations

import uuid

import httpx
import metronome
import pytest

from .conftest import START, new_key, sdk_for

pytestmark = pytest.mark.integration


def test_an_unknown_key_is_the_sdks_authentication_error_with_our_problem(edge_url: str) -> None:
    with sdk_for(edge_url, "not-a-key") as client, pytest.raises(metronome.AuthenticationError) as caught:
        client.v1.usage.ingest(usage=[{"transaction_id": "t1", "customer_id": "c1", "event_type": "x",
                                       "timestamp": START.isoformat()}])
    body = caught.value.body
    assert isinstance(body, dict)
    assert (body["code"], body["status"]) == ("unauthorized", 401)
    assert body["message"] == body["detail"] and body["message"]


def test_a_read_key_may_not_ingest_and_the_refusal_is_not_retried(edge_url: str, native: httpx.Client) -> None:
    org = native.post("/v1/customers", json={"external_id": f"org-{uuid.uuid4().hex[:8]}", "kind": "org",
                                             "name": "Reader", "email": "r@acme.test", "currency": "USD"})
    assert org.status_code == 201, org.text
    token = new_key(native, ["read"], org_id=org.json()["customer_id"])
    with sdk_for(edge_url, token) as client, pytest.raises(metronome.PermissionDeniedError) as caught:
        client.v1.usage.ingest(usage=[{"transaction_id": "t1", "customer_id": "c1", "event_type": "x",
                                       "timestamp": START.isoformat()}])
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "forbidden"


def test_usage_ingest_through_the_sdk_is_accepted(metronome_client: metronome.Metronome) -> None:
    # parked (no such customer yet): the call succeeds like Metronome's, nothing is lost
    metronome_client.v1.usage.ingest(usage=[{"transaction_id": f"t-{uuid.uuid4().hex}", "customer_id": "nobody",
                                             "event_type": "api_calls", "timestamp": START.isoformat(),
                                             "properties": {"calls": 3}}])


def test_an_unknown_metronome_path_is_the_sdks_not_found_error(edge_url: str, native: httpx.Client) -> None:
    answer = native.get("/metronome/v1/nothing-here")
    assert answer.status_code == 404
    assert answer.json()["message"] and answer.json()["code"] == "not_found"

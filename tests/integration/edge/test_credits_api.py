"""Credits through the API and the REAL billing worker (a subprocess), issue 15 item 3: grant, list, void, and
the customer's credits per meter.

Pro (usage_tiers) includes USD 2.00 of `inference` credit (money) and 1,000 GB-months of `storage` (units).
"""

from __future__ import annotations

import subprocess
from typing import Any

import httpx
import pytest

from .conftest import ADMIN, ANSWER_WAIT_SECONDS, onboard, real_worker_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def edge_settings(settings):  # type: ignore[no-untyped-def]
    return real_worker_settings(settings)


async def command(client: httpx.AsyncClient, method: str, url: str, body: dict[str, Any] | None = None,
                  key: str | None = None) -> httpx.Response:
    headers = ADMIN | ({"Idempotency-Key": key} if key else {})
    response = await client.request(method, url, json=body, headers=headers)
    assert response.status_code != 202, f"the worker did not answer {url} in {ANSWER_WAIT_SECONDS} s"
    return response


def _by_meter(view: dict[str, Any]) -> dict[str, Any]:
    return {m["meter_id"]: m["remaining_minor"] if m["currency"] else m["remaining_units"] for m in view["meters"]}


async def test_grant_list_and_void_credits_through_the_api(client: httpx.AsyncClient,
                                                           real_worker: subprocess.Popen[bytes]) -> None:
    customer = await onboard(client, payment_method_id="pm_card_visa")
    cid = customer["customer_id"]
    created = await command(client, "POST", "/v1/subscriptions", {"customer_id": cid, "plan_id": "pro"})
    assert created.status_code == 201, created.text
    sid = created.json()["subscription_id"]
    grants_url = f"/v1/subscriptions/{sid}/credit-grants"

    included = (await client.get(grants_url, headers=ADMIN)).json()
    assert sorted((g["meter_id"], g["source"], g["remaining_minor"], g["remaining_units"]) for g in included) == [
        ("inference", "plan_included", 200, None), ("storage", "plan_included", None, "1000")]

    promo = await command(client, "POST", grants_url, {"meter_id": "inference", "amount_minor": 500,
                                                       "source": "promotional", "description": "launch promo"},
                          key="promo-1")
    assert promo.status_code == 201, promo.text
    grant = promo.json()
    assert grant["grant_id"].startswith("cg_")
    assert (grant["granted_minor"], grant["remaining_minor"], grant["currency"], grant["priority"],
            grant["voided"]) == (500, 500, "USD", 20, False)
    replay = await command(client, "POST", grants_url, {"meter_id": "inference", "amount_minor": 500,
                                                        "source": "promotional", "description": "launch promo"},
                           key="promo-1")
    assert replay.json()["grant_id"] == grant["grant_id"]

    units = await command(client, "POST", grants_url, {"meter_id": "storage", "units": "250", "source": "top_up",
                                                       "priority": 5, "expires_at": "2026-06-01T00:00:00Z"})
    assert units.status_code == 201, units.text
    assert (units.json()["remaining_units"], units.json()["priority"]) == ("250", 5)

    credits = (await client.get(f"/v1/customers/{cid}/credits", headers=ADMIN)).json()
    assert _by_meter(credits) == {"inference": 700, "storage": "1250"}  # 2.00 + 5.00; 1000 + 250 units

    refusals = [
        ({"meter_id": "inference", "units": "3"}, "units"),
        ({"meter_id": "storage", "amount_minor": 100}, "amount_minor"),
        ({"meter_id": "gpu_hours", "amount_minor": 100}, "meter_id"),
        ({"meter_id": "inference", "amount_minor": 100, "effective_at": "2026-04-01T00:00:00Z",
          "expires_at": "2026-03-31T00:00:00Z"}, "expires_at"),
    ]
    for body, field in refusals:
        refused = await client.post(grants_url, json=body, headers=ADMIN)
        assert refused.status_code == 422, refused.text
        problem = refused.json()
        assert problem["code"] == "invalid_credit_grant" and problem["errors"][0]["field"] == field, problem
    assert (await client.post(grants_url, json={"meter_id": "inference", "amount_minor": 0},
                              headers=ADMIN)).status_code == 422

    voided = await command(client, "POST", f"/v1/credit-grants/{grant['grant_id']}/void", {"reason": "typo"})
    assert voided.status_code == 200, voided.text
    assert (voided.json()["remaining_minor"], voided.json()["voided"]) == (0, True)
    again = await command(client, "POST", f"/v1/credit-grants/{grant['grant_id']}/void")
    assert again.status_code == 200 and again.json()["remaining_minor"] == 0, again.text
    ledger = (await client.get(f"/v1/subscriptions/{sid}/ledger", headers=ADMIN)).json()["data"]
    voids = [(e["kind"], e["amount_minor"]) for e in ledger if e["kind"] == "void"]
    assert voids == [("void", -500)]  # one write-off, however often it is voided
    credits = (await client.get(f"/v1/customers/{cid}/credits", headers=ADMIN)).json()
    assert _by_meter(credits) == {"inference": 200, "storage": "1250"}

    unknown = await client.post("/v1/credit-grants/cg_nope/void", headers=ADMIN)
    assert unknown.status_code == 404 and unknown.json()["code"] == "unknown_credit_grant", unknown.text
    missing = await client.get("/v1/subscriptions/sub_nope/credit-grants", headers=ADMIN)
    assert missing.status_code == 404, missing.text
    no_customer = await client.get("/v1/customers/cus_nope/credits", headers=ADMIN)
    assert no_customer.status_code == 404, no_customer.text
    assert real_worker.poll() is None, "the worker exited"

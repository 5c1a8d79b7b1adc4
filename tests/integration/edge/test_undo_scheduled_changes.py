"""Undoing what is scheduled for the period end, through the API and the REAL billing worker (a subprocess):
the defect "a scheduled downgrade cannot be undone" (issue 14) and the two undo endpoints.

Before the fix, a change-plan back to the current plan while a downgrade was scheduled answered 409
`/problems/rejected/subscription` ("already on plan") and the customer was downgraded at the period end.
"""

from __future__ import annotations

import subprocess
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from .conftest import ADMIN, ADMIN_KEY, START, onboard

pytestmark = pytest.mark.integration
ANSWER_WAIT_SECONDS = 60.0  # the worker subprocess joins its consumer group first


@pytest.fixture(scope="module")
def edge_settings(settings):  # type: ignore[no-untyped-def]
    return settings.model_copy(update={"clock": "simulated", "simulated_clock_start": START.isoformat(),
                                       "command_wait_seconds": ANSWER_WAIT_SECONDS,
                                       "admin_api_key": SecretStr(ADMIN_KEY), "database_pool_size": 5})


async def command(client: httpx.AsyncClient, method: str, url: str, body: dict[str, Any] | None = None,
                  ) -> httpx.Response:
    response = await client.request(method, url, json=body, headers=ADMIN)
    assert response.status_code != 202, f"the worker did not answer {url} in {ANSWER_WAIT_SECONDS} s"
    return response


async def test_a_scheduled_downgrade_and_a_period_end_cancellation_can_be_undone_through_the_api(
        client: httpx.AsyncClient, real_worker: subprocess.Popen[bytes]) -> None:
    customer = await onboard(client, payment_method_id="pm_card_visa")  # paid: it stays active
    created = await command(client, "POST", "/v1/subscriptions",
                            {"customer_id": customer["customer_id"], "plan_id": "pro"})
    assert created.status_code == 201, created.text
    sid = created.json()["subscription_id"]
    base = f"/v1/subscriptions/{sid}"

    downgrade = await command(client, "POST", f"{base}/change-plan", {"plan_id": "free"})
    assert downgrade.status_code == 200, downgrade.text
    assert (downgrade.json()["plan_id"], downgrade.json()["pending_plan_id"]) == ("pro", "free")

    back = await command(client, "POST", f"{base}/change-plan", {"plan_id": "pro"})  # before the fix: 409
    assert back.status_code == 200, back.text
    assert (back.json()["plan_id"], back.json()["pending_plan_id"]) == ("pro", None)

    nothing = await command(client, "DELETE", f"{base}/scheduled-change")
    assert nothing.status_code == 409, nothing.text
    assert nothing.json()["type"] == "/problems/rejected/nothing_scheduled"

    await command(client, "POST", f"{base}/change-plan", {"plan_id": "free"})
    undone = await command(client, "DELETE", f"{base}/scheduled-change")
    assert undone.status_code == 200, undone.text
    assert (undone.json()["plan_id"], undone.json()["pending_plan_id"]) == ("pro", None)

    ending = await command(client, "POST", f"{base}/cancel", {"at_period_end": True})
    assert ending.status_code == 200 and ending.json()["cancel_at_period_end"] is True, ending.text
    revoked = await command(client, "POST", f"{base}/cancel/revoke")
    assert revoked.status_code == 200, revoked.text
    assert (revoked.json()["status"], revoked.json()["cancel_at_period_end"]) == ("active", False)
    again = await command(client, "POST", f"{base}/cancel/revoke")
    assert again.status_code == 409 and again.json()["type"] == "/problems/rejected/nothing_scheduled", again.text

    assert real_worker.poll() is None, "the worker exited"

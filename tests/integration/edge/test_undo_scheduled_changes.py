"""Undoing what is scheduled for the period end, through the API and the REAL billing worker (a subprocess):
the defect "a scheduled downgrade cannot be undone" (issue 14) and the two undo endpoints.

Before the fix, a change-plan back to the current plan while a downgrade was scheduled answered 409
`/problems/rejected/subscription` ("already on plan") and the customer was downgraded at the period end.
"""

from __future__ import annotations

import subprocess

import httpx
import pytest

from .conftest import call, onboard, real_worker_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def edge_settings(settings):  # type: ignore[no-untyped-def]
    return real_worker_settings(settings)


async def test_a_scheduled_downgrade_and_a_period_end_cancellation_can_be_undone_through_the_api(
        client: httpx.AsyncClient, real_worker: subprocess.Popen[bytes]) -> None:
    customer = await onboard(client, payment_method_id="pm_card_visa")  # paid: it stays active
    created = await call(client, "POST", "/v1/subscriptions",
                            {"customer_id": customer["customer_id"], "plan_id": "pro"})
    assert created.status_code == 201, created.text
    sid = created.json()["subscription_id"]
    base = f"/v1/subscriptions/{sid}"

    downgrade = await call(client, "POST", f"{base}/change-plan", {"plan_id": "free"})
    assert downgrade.status_code == 200, downgrade.text
    assert (downgrade.json()["plan_id"], downgrade.json()["pending_plan_id"]) == ("pro", "free")

    back = await call(client, "POST", f"{base}/change-plan", {"plan_id": "pro"})  # before the fix: 409
    assert back.status_code == 200, back.text
    assert (back.json()["plan_id"], back.json()["pending_plan_id"]) == ("pro", None)

    nothing = await call(client, "DELETE", f"{base}/scheduled-change")
    assert nothing.status_code == 409, nothing.text
    assert nothing.json()["type"] == "/problems/rejected/nothing_scheduled"

    await call(client, "POST", f"{base}/change-plan", {"plan_id": "free"})
    undone = await call(client, "DELETE", f"{base}/scheduled-change")
    assert undone.status_code == 200, undone.text
    assert (undone.json()["plan_id"], undone.json()["pending_plan_id"]) == ("pro", None)

    ending = await call(client, "POST", f"{base}/cancel", {"at_period_end": True})
    assert ending.status_code == 200 and ending.json()["cancel_at_period_end"] is True, ending.text
    revoked = await call(client, "POST", f"{base}/cancel/revoke")
    assert revoked.status_code == 200, revoked.text
    assert (revoked.json()["status"], revoked.json()["cancel_at_period_end"]) == ("active", False)
    again = await call(client, "POST", f"{base}/cancel/revoke")
    assert again.status_code == 409 and again.json()["type"] == "/problems/rejected/nothing_scheduled", again.text

    assert real_worker.poll() is None, "the worker exited"

"""Refusals carry a usable code (issue 14, item 8), through the API and the REAL billing worker (a subprocess):
a currency change, the same plan again and seats on a plan not sold per seat are each answered 409 with their
own problem type and code. Before the fix all three were `/problems/rejected/subscription` with reason
`subscription` (the domain family's name).

The catalog is the default one plus a plan billed in euros (`flat_eur`), so a change of currency can be asked.
"""

from __future__ import annotations

import subprocess

import httpx
import pytest

from .conftest import call, catalogs_with, onboard, real_worker_settings

pytestmark = pytest.mark.integration
EUR_PLANS = """\
version: 1
description: A plan billed in euros (test only)
currency: EUR
plans:
  - id: flat_eur
    name: Flat (EUR)
    family: classic
    interval: month
    price: "10.00"
"""


@pytest.fixture(scope="module")
def edge_settings(settings, tmp_path_factory):  # type: ignore[no-untyped-def]
    catalogs = catalogs_with(tmp_path_factory, "eur_plans.yaml", EUR_PLANS)
    return real_worker_settings(settings, catalog_dir=catalogs)


async def test_each_refusal_of_a_change_is_answered_with_its_own_code(
        client: httpx.AsyncClient, real_worker: subprocess.Popen[bytes]) -> None:
    customer = await onboard(client, payment_method_id="pm_card_visa")
    created = await call(client, "POST", "/v1/subscriptions",
                            {"customer_id": customer["customer_id"], "plan_id": "pro"})
    assert created.status_code == 201, created.text
    base = f"/v1/subscriptions/{created.json()['subscription_id']}"

    answers = {
        "currency_mismatch": await call(client, "POST", f"{base}/change-plan", {"plan_id": "flat_eur"}),
        "already_on_plan": await call(client, "POST", f"{base}/change-plan", {"plan_id": "pro"}),
        "not_sold_per_seat": await call(client, "POST", f"{base}/seats", {"seats": 3}),
    }

    for code, answer in answers.items():
        assert answer.status_code == 409, answer.text
        problem = answer.json()
        assert problem["type"] == f"/problems/rejected/{code}", problem
        assert problem["errors"] == [{"field": "subscription", "reason": code}], problem
    assert real_worker.poll() is None, "the worker exited"

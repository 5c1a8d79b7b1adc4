"""Cancel-now with a fee paid in advance under each unused-fee policy (issue 14, item 1), through the API and the
REAL billing worker (a subprocess) with the simulated gateway on PostgreSQL (its charges and refunds succeed
for pm_card_visa and are declined for pm_card_chargeDeclined).

The catalog is the default one plus `fee31_<policy>` plans: USD 31.00 a month, nothing metered, one per policy.
Each test subscribes at the module clock's now and cancels 10 days in. The first three periods are 31 days long
(10 Mar -> 10 Apr, 20 Mar -> 20 Apr, 30 Mar -> 30 Apr): 21 of 31 days unused, 31.00 x 21/31 = 21.00; the last
is 9 Apr -> 9 May, 30 days: 31.00 x 20/30 = 20.67.
"""

from __future__ import annotations

import subprocess
from datetime import datetime
from fractions import Fraction
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from shared.adapters.postgres.schema.billing import customer_balance_entries

from .conftest import ADMIN, call, catalogs_with, onboard, real_worker_settings, until

pytestmark = pytest.mark.integration
POLICY_PLANS = "version: 1\ndescription: fee plans with an unused-fee policy (test only)\ncurrency: USD\nplans:\n" + \
    "".join(f"  - {{id: fee31_{p}, name: Fee31 {p}, family: classic, interval: month, price: '31.00', "
            f"unused_fee_policy: {p}}}\n" for p in ("none", "credit", "refund"))
DAY = 86_400


@pytest.fixture(scope="module")
def edge_settings(settings, tmp_path_factory):  # type: ignore[no-untyped-def]
    catalogs = catalogs_with(tmp_path_factory, "policy_plans.yaml", POLICY_PLANS)
    return real_worker_settings(settings, catalog_dir=catalogs)


async def subscribed(client: httpx.AsyncClient, plan: str, payment_method: str, *, paid: bool,
                     ) -> tuple[str, str, dict[str, Any]]:
    customer = await onboard(client, payment_method_id=payment_method)
    cid = customer["customer_id"]
    created = await call(client, "POST", "/v1/subscriptions", {"customer_id": cid, "plan_id": plan})
    assert created.status_code == 201, created.text

    async def charged() -> dict[str, Any] | None:
        [invoice] = (await client.get(f"/v1/customers/{cid}/invoices", headers=ADMIN)).json()["data"]
        attempts = (await client.get(f"/v1/customers/{cid}/payments", headers=ADMIN)).json()["data"]
        done = invoice["status"] == "paid" if paid else any(a["status"] == "declined" for a in attempts)
        return invoice if done else None
    fee_invoice = await until(charged, "charge outcome")
    assert fee_invoice["total_minor"] == 3100
    moved = await client.post("/v1/clock/advance", json={"seconds": 10 * DAY}, headers=ADMIN)
    assert moved.status_code == 200, moved.text
    cancelled = await call(client, "POST", f"/v1/subscriptions/{created.json()['subscription_id']}/cancel",
                              {"at_period_end": False})
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
    return cid, fee_invoice["invoice_id"], fee_invoice


async def notes_of(client: httpx.AsyncClient, customer_id: str) -> list[dict[str, Any]]:
    return list((await client.get(f"/v1/customers/{customer_id}/credit-notes", headers=ADMIN)).json()["data"])


async def test_policy_credit_puts_the_unused_21_of_a_paid_31_fee_on_the_balance(
        client: httpx.AsyncClient, container, real_worker: subprocess.Popen[bytes]) -> None:  # type: ignore[no-untyped-def]
    cid, fee_invoice_id, _ = await subscribed(client, "fee31_credit", "pm_card_visa", paid=True)
    [note] = await notes_of(client, cid)
    assert (note["invoice_id"], note["reason"], note["total_minor"], note["credited_minor"], note["refunded_minor"],
            note["reduced_minor"], note["lines"][0]["invoice_line_no"]) == (
        fee_invoice_id, "order_change", 2100, 2100, 0, 0, 1)
    with container.engine.connect() as conn:
        entries = conn.execute(sa.select(customer_balance_entries.c.kind, customer_balance_entries.c.amount_minor)
                               .where(customer_balance_entries.c.customer_id == cid)).all()
    assert [tuple(e) for e in entries] == [("credit_note", 2100)]


async def test_policy_refund_gives_the_unused_21_back_through_the_gateway(
        client: httpx.AsyncClient, real_worker: subprocess.Popen[bytes]) -> None:
    cid, _, _ = await subscribed(client, "fee31_refund", "pm_card_visa", paid=True)
    [note] = await notes_of(client, cid)
    assert (note["total_minor"], note["refunded_minor"], note["credited_minor"]) == (2100, 2100, 0)

    async def refunded() -> dict[str, Any] | None:
        [found] = await notes_of(client, cid)
        return found if found["refund_status"] == "succeeded" else None
    settled = await until(refunded, "refund")
    assert settled["refund_ref"].startswith("re_sim_")


async def test_policy_none_gives_nothing_back(client: httpx.AsyncClient,
                                              real_worker: subprocess.Popen[bytes]) -> None:
    cid, _, _ = await subscribed(client, "fee31_none", "pm_card_visa", paid=True)
    assert await notes_of(client, cid) == []


async def test_an_unpaid_fee_invoice_is_reduced_and_a_second_note_settles_it(
        client: httpx.AsyncClient, real_worker: subprocess.Popen[bytes]) -> None:
    cid, fee_invoice_id, fee_invoice = await subscribed(client, "fee31_credit", "pm_card_chargeDeclined", paid=False)
    start, end = (datetime.fromisoformat(fee_invoice[k]) for k in ("period_start", "period_end"))
    days = (end - start).days
    unused = round(Fraction(3100 * (days - 10), days))  # run after the three above: 9 Apr -> 9 May, 20.67
    [note] = await notes_of(client, cid)
    assert (note["total_minor"], note["reduced_minor"], note["credited_minor"]) == (unused, unused, 0)
    # what is left owed (10.33 after the three tests above) is settled by a second credit note: paid, no cash
    rest = await call(client, "POST", f"/v1/invoices/{fee_invoice_id}/credit-notes",
                         {"amount_minor": 3100 - unused, "reason": "order_change"})
    assert rest.status_code == 201, rest.text
    assert (rest.json()["reduced_minor"], rest.json()["credited_minor"]) == (3100 - unused, 0), rest.text
    invoice = (await client.get(f"/v1/invoices/{fee_invoice_id}", headers=ADMIN)).json()
    assert (invoice["status"], invoice["amount_paid_minor"]) == ("paid", 0)

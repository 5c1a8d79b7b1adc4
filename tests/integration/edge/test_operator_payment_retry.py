"""An operator's payment retry (`POST /v1/invoices/{id}/retry-payment`, issue 19) through the API and the REAL
billing worker (a subprocess) with the simulated gateway on PostgreSQL, whose books (`simulated_gateway_charges`)
say what was really charged: pm_card_visa pays, pm_card_chargeDeclined is declined.

Pro is USD 9.00 a month, charged in advance when the subscription starts: the first attempt (number 1) is
declined, the invoice stays open owing 900.
"""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from shared.adapters.postgres.schema.billing import simulated_gateway_charges

from .conftest import ADMIN, call, onboard, real_worker_settings, until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def edge_settings(settings):  # type: ignore[no-untyped-def]
    return real_worker_settings(settings)


async def declined_invoice(client: httpx.AsyncClient) -> tuple[str, str]:
    """A Pro subscriber whose card declined the first charge: (customer id, the open invoice's id)."""
    customer = await onboard(client, payment_method_id="pm_card_chargeDeclined")
    cid = customer["customer_id"]
    created = await call(client, "POST", "/v1/subscriptions", {"customer_id": cid, "plan_id": "pro"})
    assert created.status_code == 201, created.text

    async def declined() -> str | None:
        attempts = (await client.get(f"/v1/customers/{cid}/payments", headers=ADMIN)).json()["data"]
        return str(attempts[0]["invoice_id"]) if [a["status"] for a in attempts] == ["declined"] else None
    return cid, await until(declined, "declined first charge")


def books(container: Any, invoice_id: str) -> list[tuple[str, bool, int]]:
    """The simulated provider's own record of the invoice's charges: (payment method, succeeded, amount)."""
    c = simulated_gateway_charges.c
    with container.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(c.payment_method_id, c.succeeded, c.amount_minor)
                                               .where(c.invoice_id == invoice_id).order_by(c.id))]


async def paid(client: httpx.AsyncClient, invoice_id: str) -> dict[str, Any]:
    async def read() -> dict[str, Any] | None:
        invoice = (await client.get(f"/v1/invoices/{invoice_id}", headers=ADMIN)).json()
        return dict(invoice) if invoice["status"] == "paid" else None
    return await until(read, "paid invoice")


async def test_a_declined_invoice_is_paid_by_an_operator_retry_with_the_customers_new_card(
        client: httpx.AsyncClient, container, real_worker: subprocess.Popen[bytes]) -> None:  # type: ignore[no-untyped-def]
    cid, invoice_id = await declined_invoice(client)

    retried = await call(client, "POST", f"/v1/invoices/{invoice_id}/retry-payment",
                            {"payment_method_id": "pm_card_visa"})

    assert retried.status_code == 200, retried.text
    assert retried.json()["invoice_id"] == invoice_id
    invoice = await paid(client, invoice_id)
    assert invoice["amount_paid_minor"] == 900
    attempts = (await client.get(f"/v1/customers/{cid}/payments", headers=ADMIN)).json()["data"]
    assert sorted((a["attempt_no"], a["status"], a["reason"], a["amount_minor"]) for a in attempts) == [
        (1, "declined", "initial", 900), (2, "succeeded", "manual", 900)]
    assert books(container, invoice_id) == [("pm_card_chargeDeclined", False, 900), ("pm_card_visa", True, 900)]
    [subscription] = (await client.get(f"/v1/customers/{cid}/subscriptions", headers=ADMIN)).json()["data"]
    assert subscription["payment_method_id"] == "pm_card_visa"

    again = await call(client, "POST", f"/v1/invoices/{invoice_id}/retry-payment")
    assert again.status_code == 409, again.text
    assert (again.json()["code"], again.json()["errors"][0]["reason"]) == (
        "invoice_not_collectible", "invoice_not_collectible")
    assert books(container, invoice_id)[-1] == ("pm_card_visa", True, 900)


async def test_a_retry_while_another_is_unsettled_is_refused_and_the_invoice_is_charged_once(
        client: httpx.AsyncClient, container, real_worker: subprocess.Popen[bytes]) -> None:  # type: ignore[no-untyped-def]
    _, invoice_id = await declined_invoice(client)
    url = f"/v1/invoices/{invoice_id}/retry-payment"

    answers = await asyncio.gather(*(call(client, "POST", url, {"payment_method_id": "pm_card_visa"})
                                     for _ in range(2)))

    assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
    [refused] = [a for a in answers if a.status_code == 409]
    # the second is refused while the first's attempt is pending or in flight, or, once it was charged, as
    # nothing left to collect: never a second charge
    assert refused.json()["code"] in ("payment_in_flight", "invoice_not_collectible"), refused.text
    await paid(client, invoice_id)
    assert books(container, invoice_id) == [("pm_card_chargeDeclined", False, 900), ("pm_card_visa", True, 900)]


async def test_a_draft_void_or_unknown_invoice_is_not_retried(
        client: httpx.AsyncClient, real_worker: subprocess.Popen[bytes]) -> None:
    _, invoice_id = await declined_invoice(client)
    voided = await call(client, "POST", f"/v1/invoices/{invoice_id}/void")
    assert voided.status_code == 200, voided.text

    refused = await call(client, "POST", f"/v1/invoices/{invoice_id}/retry-payment")
    unknown = await call(client, "POST", "/v1/invoices/in_nope/retry-payment")
    bad_card = await call(client, "POST", f"/v1/invoices/{invoice_id}/retry-payment",
                             {"payment_method_id": "card 4242"})

    assert (refused.status_code, refused.json()["code"]) == (409, "invoice_not_collectible"), refused.text
    assert (refused.json()["type"], refused.json()["errors"][0]["field"]) == (
        "/problems/rejected/invoice_not_collectible", "invoice_id")
    assert unknown.status_code == 404, unknown.text
    assert bad_card.status_code == 422, bad_card.text


async def test_an_invoice_written_off_as_uncollectible_is_collected_by_an_operator_retry(
        client: httpx.AsyncClient, container, real_worker: subprocess.Popen[bytes]) -> None:  # type: ignore[no-untyped-def]
    _, invoice_id = await declined_invoice(client)
    written_off = await call(client, "POST", f"/v1/invoices/{invoice_id}/mark-uncollectible")
    assert (written_off.status_code, written_off.json()["status"]) == (200, "uncollectible"), written_off.text

    retried = await call(client, "POST", f"/v1/invoices/{invoice_id}/retry-payment",
                            {"payment_method_id": "pm_card_visa"})

    assert retried.status_code == 200, retried.text
    invoice = await paid(client, invoice_id)  # the executor charges attempts of uncollectible invoices too
    assert invoice["amount_paid_minor"] == 900
    assert books(container, invoice_id) == [("pm_card_chargeDeclined", False, 900), ("pm_card_visa", True, 900)]

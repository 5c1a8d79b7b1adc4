"""A charge the provider first refuses for its rate limit (HTTP 429) is sent again and paid once (issue 17),
through the API and the REAL billing worker (a subprocess) with the simulated gateway on PostgreSQL.

`pm_sim_rate_limited_once` makes the simulated provider answer the first request of each charge with a 429
(nothing done, Retry-After 0.05 s). The worker's paced gateway waits and sends the same request (same
idempotency key) again: the Pro plan's first invoice (USD 9.00) is paid, the provider's books hold exactly one
charge of 900 for it, the attempt succeeded at its first dispatch, and no `payment.failed` was ever written.
"""

from __future__ import annotations

import subprocess
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from shared.adapters.postgres.schema.billing import payment_attempts, simulated_gateway_charges
from shared.adapters.postgres.schema.core import outbox

from .conftest import ADMIN, call, onboard, real_worker_settings, until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def edge_settings(settings):  # type: ignore[no-untyped-def]
    return real_worker_settings(settings)


async def test_a_charge_rate_limited_once_is_sent_again_and_paid_once_without_a_failure(
        client: httpx.AsyncClient, container, real_worker: subprocess.Popen[bytes]) -> None:  # type: ignore[no-untyped-def]
    customer = await onboard(client, payment_method_id="pm_sim_rate_limited_once")
    cid = customer["customer_id"]
    created = await call(client, "POST", "/v1/subscriptions", {"customer_id": cid, "plan_id": "pro"})
    assert created.status_code == 201, created.text

    async def paid() -> dict[str, Any] | None:
        found = (await client.get(f"/v1/customers/{cid}/invoices", headers=ADMIN)).json()["data"]
        return found[0] if found and found[0]["status"] == "paid" else None
    invoice = await until(paid, "paid invoice")
    assert (invoice["total_minor"], invoice["amount_paid_minor"]) == (900, 900)

    with container.engine.connect() as conn:
        charges = conn.execute(sa.select(simulated_gateway_charges.c.succeeded,
                                         simulated_gateway_charges.c.amount_minor)
                               .where(simulated_gateway_charges.c.invoice_id == invoice["invoice_id"])).all()
        attempts = conn.execute(sa.select(payment_attempts.c.status, payment_attempts.c.dispatch_count)
                                .where(payment_attempts.c.invoice_id == invoice["invoice_id"])).all()
        failures = conn.execute(sa.select(sa.func.count()).select_from(outbox).where(
            outbox.c.event_type == "payment.failed", outbox.c.message_key == created.json()["subscription_id"],
        )).scalar_one()
    assert [tuple(c) for c in charges] == [(True, 900)]
    assert [tuple(a) for a in attempts] == [("succeeded", 1)]
    assert failures == 0

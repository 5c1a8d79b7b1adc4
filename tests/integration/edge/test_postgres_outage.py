"""The edge rides out a PostgreSQL outage (issue 12, defect 7): on a PRIVATE PostgreSQL that the test stops and
starts (the shared stack is never touched), with the shared Kafka.

During the outage: usage of customers the edge already resolved keeps flowing to Kafka (authentication,
customer routes and the spend check are served from what this process last read); everything that needs
PostgreSQL answers 503 problem+json with Retry-After, never 500; /readyz names the dependency that is down.
After it: every endpoint works again by itself, without a restart.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from services.ingest.app import create_app
from services.ingest.bootstrap import build_container
from services.ingest.container import Container
from shared.adapters.postgres.schema.billing import subscriptions
from shared.adapters.postgres.schema.core import customers
from shared.contracts import topics
from tests.outage_support import PrivatePostgres, private_postgres

from .conftest import ADMIN, ADMIN_KEY, bearer, consume

pytestmark = pytest.mark.integration

# Seconds PostgreSQL stays down before the requests (EDGE_PG_OUTAGE_S=60 for the 60 s outage).
OUTAGE_S = float(os.environ.get("EDGE_PG_OUTAGE_S", "0"))
CUSTOMER = "cust_outage_known"
SUBSCRIPTION = "sub_outage_known"


@pytest.fixture(scope="module")
def pg() -> Iterator[PrivatePostgres]:
    with private_postgres() as server:
        yield server


@pytest.fixture(scope="module")
def edge_settings(settings, pg):  # type: ignore[no-untyped-def]
    # The simulated clock, as in the demo and the fault suite: it lives in PostgreSQL too.
    return settings.model_copy(update={"database_url": pg.url, "database_schema": pg.migrate(),
                                       "admin_api_key": SecretStr(ADMIN_KEY), "database_pool_size": 5,
                                       "clock": "simulated", "simulated_clock_start": datetime.now(UTC).isoformat()})


@pytest.fixture(scope="module")
def container(edge_settings) -> Iterator[Container]:  # type: ignore[no-untyped-def]
    built = build_container(edge_settings)
    now = datetime.now(UTC)
    with built.engine.begin() as conn:
        conn.execute(customers.insert().values(customer_id=CUSTOMER, external_id="outage-known", kind="org",
                                               name="Known", email="known@example.test", currency="USD"))
        conn.execute(subscriptions.insert().values(
            subscription_id=SUBSCRIPTION, customer_id=CUSTOMER, plan_id="pro", status="active", seats=1,
            currency="USD", anchor_day=now.day, started_at=now - timedelta(days=1),
            current_period_start=now - timedelta(days=1), current_period_end=now + timedelta(days=29)))
    yield built
    built.producer.close()
    built.usage_producer.close()
    built.engine.dispose()


@pytest.fixture
async def client(container) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    app = create_app(container)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://edge", timeout=60) as http:
        yield http


def _event(customer_id: str) -> dict[str, Any]:
    return {"transaction_id": f"tx-{uuid.uuid4().hex[:12]}", "customer_id": customer_id, "event_type": "inference",
            "timestamp": (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
            "properties": {"cost_usd_micros": 5}}


def _is_unavailable(response: httpx.Response) -> bool:
    return (response.status_code == 503 and response.headers["content-type"] == "application/problem+json"
            and int(response.headers["retry-after"]) >= 1)


async def _eventually(request: Any, expected: int) -> httpx.Response:
    """Poll until the edge answers `expected` again (no timing assertion: a generous deadline)."""
    deadline = time.monotonic() + 60
    while True:
        response = await request()
        if response.status_code == expected or time.monotonic() > deadline:
            return response
        await asyncio.sleep(0.2)


async def test_known_customers_usage_flows_and_everything_else_is_503_during_a_postgresql_outage(
        client, pg, edge_settings):
    created = await client.post("/v1/api-keys", headers=ADMIN,
                                json={"name": "producer", "scopes": ["ingest"], "producer": "outage-test"})
    assert created.status_code == 201, created.text
    producer = bearer(created.json()["token"])
    warm = await client.post("/v1/ingest", json=[_event(CUSTOMER)], headers=producer)
    assert warm.json()["accepted"] == 1, warm.text

    pg.stop()
    try:
        await asyncio.sleep(OUTAGE_S)  # the requests below come at the end of the outage
        during = _event(CUSTOMER)
        usage = await client.post("/v1/ingest", json=[during], headers=producer)
        unknown = await client.post("/v1/ingest", json=[_event("cust_never_seen")], headers=producer)
        keyed = await client.post("/v1/ingest", json=[_event(CUSTOMER)],
                                  headers={**producer, "Idempotency-Key": uuid.uuid4().hex})
        read = await client.get(f"/v1/customers/{CUSTOMER}", headers=ADMIN)
        write = await client.post("/v1/customers", headers={**ADMIN, "Idempotency-Key": uuid.uuid4().hex},
                                  json={"external_id": "x", "kind": "org", "name": "n", "email": "a@b.test",
                                        "currency": "USD"})
        quota = await client.get(f"/v1/quota/orgs/{CUSTOMER}", headers=ADMIN)
        credit = await client.post(f"/v1/quota/orgs/{CUSTOMER}/report-credits", headers=ADMIN,
                                   json={"user_id": "u1", "enquiry_id": uuid.uuid4().hex})
        ready = await client.get("/readyz")
    finally:
        pg.start()
    restarted = time.monotonic()

    assert usage.status_code == 200 and usage.json()["accepted"] == 1, usage.text
    assert all(_is_unavailable(r) for r in (unknown, keyed, read, write, quota, credit)), \
        [(r.status_code, r.text) for r in (unknown, keyed, read, write, quota, credit)]
    assert ready.status_code == 503 and ready.json()["checks"] == {"postgres": False, "kafka": True}
    delivered = [m for m in consume(edge_settings, topics.USAGE, 2, 30)
                 if during["transaction_id"].encode() in m.value()]
    assert len(delivered) == 1

    assert (await _eventually(lambda: client.get("/readyz"), 200)).status_code == 200
    assert (await _eventually(lambda: client.get(f"/v1/customers/{CUSTOMER}", headers=ADMIN), 200)).status_code == 200
    assert (await client.get(f"/v1/quota/orgs/{CUSTOMER}", headers=ADMIN)).status_code == 404
    print(f"edge answering again {time.monotonic() - restarted:.2f} s after PostgreSQL accepted connections")
    again = await client.post("/v1/ingest", json=[_event(CUSTOMER)],
                              headers={**producer, "Idempotency-Key": uuid.uuid4().hex})
    assert again.json()["accepted"] == 1, again.text

"""The edge during a Kafka outage (issue 12, defect 7), on a PRIVATE broker that the test stops and starts (the
shared stack is never touched), with the shared PostgreSQL.

During the outage nothing is acknowledged that Kafka did not acknowledge: usage answers 503 problem+json
with Retry-After once the producer gives up (`message.timeout.ms`, shortened here), reads keep working
(PostgreSQL), /readyz names Kafka. After it, the same producers deliver again: no restart.
A lifecycle command is different: it is accepted into the outbox with its audit row (202, pending: the worker
cannot see it yet) and reaches commands.v1 once the broker is back; so is a Stripe webhook's translation
(200 published, on payments.v1 once the broker is back; it was a 503 and Stripe's retry). Before the outbox,
a command's audit row was committed and the request then failed with 503: the command was lost although the
audit trail recorded it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr

from services.ingest.app import create_app
from services.ingest.bootstrap import build_container
from services.ingest.container import Container
from shared.adapters.kafka.producer import KafkaProducer
from shared.adapters.postgres.schema.billing import subscriptions
from shared.adapters.postgres.schema.core import customers
from shared.contracts import topics
from shared.contracts.envelope import Envelope
from shared.sdk.kafka import BatchProducer
from tests.outage_support import PrivateKafka, private_kafka

from .conftest import ADMIN, ADMIN_KEY, consume

pytestmark = pytest.mark.integration

CUSTOMER = "cust_kafka_outage"
GIVE_UP_MS = 4000  # the producers' message.timeout.ms (30 s in production): how long a request waits for Kafka


@pytest.fixture(scope="module")
def broker() -> Iterator[PrivateKafka]:
    with private_kafka() as kafka:
        yield kafka


@pytest.fixture(scope="module")
def edge_settings(settings, broker):  # type: ignore[no-untyped-def]
    prefix = f"k{uuid.uuid4().hex[:8]}."
    broker.create_topics(prefix)
    return settings.model_copy(update={"kafka_bootstrap": broker.bootstrap, "topic_prefix": prefix,
                                       "admin_api_key": SecretStr(ADMIN_KEY), "database_pool_size": 5,
                                       "command_wait_seconds": 0.5})


@pytest.fixture(scope="module")
def container(edge_settings) -> Iterator[Container]:  # type: ignore[no-untyped-def]
    built = build_container(edge_settings)
    timeout = {"message.timeout.ms": GIVE_UP_MS}
    built = Container(
        settings=built.settings, engine=built.engine, stripe=built.stripe, clock=built.clock, catalog=built.catalog,
        producer=KafkaProducer(edge_settings, client_id="ingest", **timeout),
        usage_producer=BatchProducer(edge_settings.kafka_producer_config(**{"client.id": "ingest-usage", **timeout})))
    now = datetime.now(UTC)
    with built.engine.begin() as conn:
        conn.execute(customers.insert().values(customer_id=CUSTOMER, external_id="kafka-outage", kind="org",
                                               name="Known", email="known@example.test", currency="USD"))
        conn.execute(subscriptions.insert().values(
            subscription_id="sub_kafka_outage", customer_id=CUSTOMER, plan_id="pro", status="active", seats=1,
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
            transport=httpx.ASGITransport(app=app), base_url="http://edge", timeout=120) as http:
        yield http


def _event() -> list[dict[str, Any]]:
    return [{"transaction_id": f"tx-{uuid.uuid4().hex[:12]}", "customer_id": CUSTOMER, "event_type": "inference",
             "timestamp": (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
             "properties": {"cost_usd_micros": 5}}]


def _is_unavailable(response: httpx.Response) -> bool:
    return (response.status_code == 503 and response.headers["content-type"] == "application/problem+json"
            and int(response.headers["retry-after"]) >= 1)


def _paid_webhook(secret: str) -> tuple[bytes, dict[str, str]]:
    payload = orjson.dumps({"id": f"evt_{uuid.uuid4().hex[:16]}", "type": "invoice.paid", "created": int(time.time()),
                            "data": {"object": {"id": "in_x", "payment_intent": "pi_x", "amount_paid": 900,
                                                "currency": "usd", "metadata": {"subscription_id": "sub_kafka_outage",
                                                                                "invoice_id": "in_outage"}}}})
    at = int(time.time())
    signature = hmac.new(secret.encode(), f"{at}.".encode() + payload, hashlib.sha256).hexdigest()
    return payload, {"Stripe-Signature": f"t={at},v1={signature}", "content-type": "application/json"}


async def _delivered(settings: Any, topic: str, wanted: Any, deadline: float) -> list[Envelope]:
    """The envelopes on `topic` that `wanted` selects, read again until one shows or the deadline passed."""
    found: list[Envelope] = []
    while not found and time.monotonic() < deadline:  # the outbox relay publishes once Kafka is back
        messages = await asyncio.to_thread(consume, settings, topic, 10, 2.0)
        found = [e for e in map(Envelope.from_bytes, (m.value() for m in messages)) if wanted(e)]
    return found


async def test_usage_is_503_commands_wait_in_the_outbox_reads_work_and_delivery_resumes_after_a_kafka_outage(
        client, broker, edge_settings):
    webhook, signed = _paid_webhook(edge_settings.stripe_webhook_secret.get_secret_value().split(",")[0].strip())
    warm = await client.post("/v1/ingest", json=_event(), headers=ADMIN)
    assert warm.status_code == 200 and warm.json()["accepted"] == 1, warm.text

    broker.stop()
    try:
        usage = await client.post("/v1/ingest", json=_event(), headers=ADMIN)
        command = await client.post("/v1/subscriptions/sub_kafka_outage/pause", headers=ADMIN)
        payment = await client.post("/v1/webhooks/stripe", content=webhook, headers=signed)
        read = await client.get(f"/v1/customers/{CUSTOMER}", headers=ADMIN)
        ready = await client.get("/readyz")
    finally:
        broker.start()

    assert _is_unavailable(usage), (usage.status_code, usage.text)
    assert command.status_code == 202 and command.json()["status"] == "pending", (command.status_code, command.text)
    assert payment.status_code == 200 and payment.json()["status"] == "published", payment.text
    assert read.status_code == 200
    assert ready.status_code == 503 and ready.json()["checks"] == {"postgres": True, "kafka": False}

    deadline = time.monotonic() + 90
    while True:  # no timing assertion: the deadline only stops a broken run
        again = await client.post("/v1/ingest", json=_event(), headers=ADMIN)
        if again.status_code == 200 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert again.status_code == 200 and again.json()["accepted"] == 1, again.text
    assert (await client.get("/readyz")).status_code == 200

    command_id = command.json()["command_id"]
    commands = await _delivered(edge_settings, topics.COMMANDS, lambda e: str(e.event_id) == command_id, deadline)
    assert [(e.type, e.payload["subscription_id"]) for e in commands] == [("subscription.pause", "sub_kafka_outage")]
    payments = await _delivered(edge_settings, topics.PAYMENTS, lambda e: e.payload["invoice_id"] == "in_outage",
                                deadline)
    assert [(e.type, e.payload["amount_minor"]) for e in payments] == [("payment.succeeded", 900)]

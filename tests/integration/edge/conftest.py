"""Fixtures for the edge's API tests: the real app (httpx over ASGI) on a fresh schema and topic prefix,
with real PostgreSQL, Kafka and stripe-mock, on a simulated billing clock.

`StandInWorker` is a TEST DOUBLE at the seam between the edge and the billing worker (another area owns
the real one): it consumes commands.v1 and writes the rows the worker would write (`subscriptions`,
`command_outcomes`), so the edge's publish -> wait -> answer path is exercised end to end. It encodes no
billing rule beyond what each test needs (resume of a non-paused subscription is rejected).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer
from pydantic import SecretStr

from services.ingest.app import create_app
from services.ingest.bootstrap import build_container
from services.ingest.container import Container
from services.ingest.relay import build_relay
from shared.adapters.postgres.schema.billing import subscriptions
from shared.adapters.postgres.schema.core import command_outcomes
from shared.contracts import topics
from shared.contracts.envelope import Envelope
from tests.served import worker_process

START = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
ADMIN_KEY = "test-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
ANSWER_WAIT_SECONDS = 60.0  # a worker process joins its consumer group first
CATALOGS = Path(__file__).resolve().parents[3] / "shared" / "catalogs"


class StandInWorker:
    """Answers commands like the worker would, from the test's point of view (see module docstring)."""

    def __init__(self, settings: Any, engine: sa.Engine) -> None:
        self.engine = engine
        self.silent: set[str] = set()  # subscription ids whose commands get no answer (to test 202)
        self._consumer = Consumer(settings.kafka_consumer_config(f"standin-{uuid.uuid4().hex[:8]}"))
        self._consumer.subscribe([settings.topic(topics.COMMANDS)])
        self._stop = threading.Event()
        self.seen: list[Envelope] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._consumer.poll(0.1)
            if msg is None or msg.error() is not None:
                continue
            envelope = Envelope.from_bytes(msg.value())
            self.seen.append(envelope)
            if envelope.payload["subscription_id"] in self.silent:
                continue
            self._answer(envelope)

    def _answer(self, env: Envelope) -> None:
        p = env.payload
        sid = p["subscription_id"]
        status, code = "applied", None
        with self.engine.begin() as conn:
            current = conn.execute(sa.select(subscriptions).where(subscriptions.c.subscription_id == sid)).first()
            if env.type == "subscription.create":
                trial = p.get("trial_days") or 0
                conn.execute(subscriptions.insert().values(
                    subscription_id=sid, customer_id=p["customer_id"], plan_id=p["plan_id"],
                    status="trialing" if trial else "active", seats=p["seats"], currency=p["currency"],
                    anchor_day=START.day, started_at=START, current_period_start=START,
                    current_period_end=START + timedelta(days=31),
                    payment_method_id=p.get("payment_method_id")))
            elif current is None:
                status, code = "rejected", "unknown_subscription"
            elif env.type == "subscription.resume" and current.status != "paused":
                status, code = "rejected", "invalid_transition"
            else:
                values = {
                    "subscription.change_plan": {"plan_id": p.get("plan_id")},
                    "subscription.change_seats": {"seats": p.get("seats")},
                    "subscription.pause": {"status": "paused"},
                    "subscription.resume": {"status": "active"},
                    "subscription.cancel": ({"cancel_at_period_end": True} if p.get("at_period_end")
                                            else {"status": "cancelled"}),
                    "payment_method.update": {"payment_method_id": p.get("payment_method_id")},
                }.get(env.type, {})
                if values:
                    conn.execute(sa.update(subscriptions)
                                 .where(subscriptions.c.subscription_id == sid).values(**values))
            conn.execute(command_outcomes.insert().values(
                command_id=env.event_id, subscription_id=sid, command_type=env.type, status=status,
                error_code=code, error_detail=f"cannot {env.type} from the current status" if code else None))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._consumer.close()


@pytest.fixture(scope="module")
def edge_settings(settings):  # type: ignore[no-untyped-def]
    return settings.model_copy(update={"clock": "simulated", "simulated_clock_start": START.isoformat(),
                                       "command_wait_seconds": 5.0, "admin_api_key": SecretStr(ADMIN_KEY),
                                       "database_pool_size": 5})


def real_worker_settings(settings: Any, **more: Any) -> Any:
    """Settings of a module whose commands the REAL worker (`real_worker`) answers: the simulated clock at
    START, the admin key, and a command wait long enough for the worker process to join its group first."""
    return settings.model_copy(update={"clock": "simulated", "simulated_clock_start": START.isoformat(),
                                       "command_wait_seconds": ANSWER_WAIT_SECONDS,
                                       "admin_api_key": SecretStr(ADMIN_KEY), "database_pool_size": 5, **more})


def catalogs_with(tmp_path_factory: Any, name: str, document: str) -> Path:
    """A catalog folder holding the shipped documents plus `document` as `name`."""
    catalogs: Path = tmp_path_factory.mktemp("catalogs")
    for shipped in CATALOGS.glob("*.yaml"):
        shutil.copy(shipped, catalogs / shipped.name)
    (catalogs / name).write_text(document)
    return catalogs


@pytest.fixture(scope="module")
def container(edge_settings) -> Iterator[Container]:  # type: ignore[no-untyped-def]
    built = build_container(edge_settings)
    built.producer.start()
    relay = build_relay(built)  # the app's lifespan starts one; ASGITransport does not run the lifespan
    relay.start()
    yield built
    relay.stop()
    built.producer.close()
    built.usage_producer.close()
    built.engine.dispose()


@pytest.fixture(scope="module")
def app(container):  # type: ignore[no-untyped-def]
    return create_app(container)


@pytest.fixture(scope="module")
def real_worker(edge_settings, container) -> Iterator[subprocess.Popen[bytes]]:  # type: ignore[no-untyped-def]
    """The REAL billing worker (consumer, scheduler, payment and refund executors) as a process on the module's
    schema and topics (its `edge_settings`); the container's relay publishes the shared outbox."""
    with worker_process(edge_settings) as proc:
        yield proc


@pytest.fixture(scope="module")
def worker(edge_settings, container) -> Iterator[StandInWorker]:  # type: ignore[no-untyped-def]
    stand_in = StandInWorker(edge_settings, container.engine)
    yield stand_in
    stand_in.close()


@pytest.fixture
async def client(app) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge",
                                 timeout=30) as http:
        yield http


async def onboard(client: httpx.AsyncClient, external_id: str | None = None, **fields: Any) -> dict[str, Any]:
    body = {"external_id": external_id or f"ext-{uuid.uuid4().hex[:10]}", "kind": "org", "name": "Acme",
            "email": "billing@acme.test", "currency": "USD", **fields}
    response = await client.post("/v1/customers", json=body, headers=ADMIN)
    assert response.status_code in (200, 201), response.text
    return dict(response.json())


async def subscribe(client: httpx.AsyncClient, customer_id: str, plan_id: str = "pro", **fields: Any) -> dict[str, Any]:
    response = await client.post("/v1/subscriptions", json={"customer_id": customer_id, "plan_id": plan_id, **fields},
                                 headers=ADMIN)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def new_key(client: httpx.AsyncClient, scopes: list[str], **binding: Any) -> str:
    response = await client.post("/v1/api-keys", json={"name": "test", "scopes": scopes, **binding}, headers=ADMIN)
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


async def call(client: httpx.AsyncClient, method: str, url: str, body: Any = None,
               headers: dict[str, str] | None = None) -> httpx.Response:
    """An admin request whose command the worker answered (a 202 means it did not within the wait)."""
    response = await client.request(method, url, json=body, headers={**ADMIN, **(headers or {})})
    assert response.status_code != 202, f"the worker did not answer {url} in time"
    return response


async def until(probe: Any, what: str, timeout: float = ANSWER_WAIT_SECONDS) -> Any:
    """Poll `probe()` (async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        found = await probe()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def advance_to(client: httpx.AsyncClient, instant: datetime) -> None:
    """Move the simulated billing clock forward to `instant` (never back)."""
    now = datetime.fromisoformat((await call(client, "GET", "/v1/clock")).json()["now"])
    if instant > now:
        moved = await call(client, "POST", "/v1/clock/advance", {"seconds": int((instant - now).total_seconds())})
        assert moved.status_code == 200, moved.text


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def consume(settings: Any, topic: str, count: int, timeout: float = 20.0) -> list[Any]:
    """Read `count` messages from the start of a (prefixed) topic."""
    consumer = Consumer(settings.kafka_consumer_config(f"read-{uuid.uuid4().hex[:8]}"))
    consumer.subscribe([settings.topic(topic)])
    found: list[Any] = []
    deadline = datetime.now(UTC) + timedelta(seconds=timeout)
    try:
        while len(found) < count and datetime.now(UTC) < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                found.append(msg)
    finally:
        consumer.close()
    return found

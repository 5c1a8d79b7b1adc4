"""The edge, the SDK and a plain Kafka client against the REAL billing worker (a subprocess).

- the SDK's `HttpUsageClient` talks to the edge served by uvicorn on a real socket: per-event results
  across batches, and a retry after a lost response carries the same Idempotency-Key and is replayed
  (nothing produced twice);
- a message written by `kcat` following shared/sdk/README.md is materialised by the worker;
- in both cases the usage becomes visible through `GET /v1/subscriptions/{id}/usage`.

The subscriptions are written as the worker's read model (the worker's own subscribe path is tested in
its area); this module runs on the real clock, so that the SDK's local time checks and the edge's agree.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr

from services.ingest.app import create_app
from shared.adapters.postgres.schema.billing import subscriptions
from shared.adapters.postgres.schema.core import customers
from shared.contracts import topics
from shared.sdk.client import HttpUsageClient
from shared.sdk.envelopes import usage_event_id
from tests.served import served_app, worker_log

from .conftest import ADMIN_KEY, consume

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def edge_settings(settings):  # type: ignore[no-untyped-def]
    return settings.model_copy(update={"clock": "real", "admin_api_key": SecretStr(ADMIN_KEY),
                                       "database_pool_size": 5, "log_level": "WARNING"})


@pytest.fixture(scope="module")
def edge_url(container) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The app served by uvicorn on a real socket, in a thread of this process."""
    with served_app(create_app(container)) as url:
        yield url


def live_subscription(engine: Any, plan_id: str = "pro") -> tuple[str, str]:
    """A customer and its active subscription, as onboarding and the worker's subscribe leave them."""
    now = datetime.now(UTC)
    cid, sid = f"cust_{uuid.uuid4().hex[:12]}", f"sub_{uuid.uuid4().hex[:12]}"
    with engine.begin() as conn:
        conn.execute(customers.insert().values(customer_id=cid, external_id=cid, kind="org", name="Pipeline",
                                               email="ops@pipeline.test", currency="USD"))
        conn.execute(subscriptions.insert().values(
            subscription_id=sid, customer_id=cid, plan_id=plan_id, status="active", seats=1, currency="USD",
            anchor_day=(now - timedelta(days=1)).day, started_at=now - timedelta(days=1),
            current_period_start=now - timedelta(days=1), current_period_end=now + timedelta(days=29)))
    return cid, sid


def wait_for_usage(edge_url: str, sid: str, meter: str, expected: Decimal, worker: Any,
                   timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited: {worker_log(worker)}")
        body = httpx.get(f"{edge_url}/v1/subscriptions/{sid}/usage",
                         headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
        got = {m["meter_id"]: Decimal(m["quantity"]) for m in body["meters"]}
        if got.get(meter, Decimal(0)) >= expected:
            return body
        time.sleep(0.2)
    raise AssertionError(f"usage of {sid} never reached {expected}: {body}")


def event(customer_id: str, n: int, **overrides: Any) -> dict[str, Any]:
    return {"transaction_id": f"tx-{uuid.uuid4().hex[:8]}-{n}", "customer_id": customer_id,
            "event_type": "inference", "timestamp": (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
            "properties": {"cost_usd_micros": 1000}, **overrides}


def test_the_http_client_gets_one_result_per_event_across_batches_and_the_worker_counts_the_usage(
        container, edge_url, real_worker):
    cid, sid = live_subscription(container.engine)
    events = [event(cid, n) for n in range(1500)]
    for n in (7, 1203):
        events[n] = event(cid, n, event_type="report_generated")  # not metered by the pro plan
    client = HttpUsageClient(edge_url, ADMIN_KEY)

    results = client.send(events)
    client.close()

    assert [r["index"] for r in results] == list(range(1500))
    assert [r["transaction_id"] for r in results] == [e["transaction_id"] for e in events]
    assert [n for n, r in enumerate(results) if r["status"] != "accepted"] == [7, 1203]
    assert {results[7]["reason"], results[1203]["reason"]} == {"unknown_event_type"}
    body = wait_for_usage(edge_url, sid, "inference", Decimal(1498 * 1000), real_worker)
    [inference] = [m for m in body["meters"] if m["meter_id"] == "inference"]
    assert Decimal(inference["quantity"]) == 1498 * 1000
    # USD 1.498 rounds to 1.50; this subscription was written without its included-credit grant.
    assert (inference["gross_minor"], inference["credit_remaining_minor"], inference["estimated_charge_minor"]) \
        == (150, None, 150)


class LosesFirstResponse(httpx.BaseTransport):
    """A network that delivers the first request to the edge but loses its response (read timeout)."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.keys: list[str | None] = []
        self.replayed: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.keys.append(request.headers.get("idempotency-key"))
        response = self.inner.handle_request(request)
        response.read()
        self.replayed.append(response.headers.get("idempotent-replayed"))
        if len(self.keys) == 1:
            raise httpx.ReadTimeout("response lost", request=request)
        return response


def test_a_retry_after_a_lost_response_carries_the_same_key_and_is_replayed_not_produced_again(
        container, edge_settings, edge_url):
    cid, sid = live_subscription(container.engine)
    events = [event(cid, n) for n in range(20)]
    network = LosesFirstResponse()
    client = HttpUsageClient(edge_url, ADMIN_KEY, transport=network, backoff_seconds=0.01)

    results = client.send(events)
    client.close()

    assert len(network.keys) == 2 and network.keys[0] == network.keys[1] is not None
    assert network.replayed == [None, "true"]
    assert [r["status"] for r in results] == ["accepted"] * 20
    produced = [m for m in consume(edge_settings, topics.USAGE, 10_000, timeout=8) if m.key() == sid.encode()]
    assert len(produced) == 20


def test_a_message_written_by_kcat_following_the_readme_is_materialised_once(
        container, edge_settings, edge_url, real_worker, tmp_path):
    kcat = shutil.which("kcat")
    if kcat is None:
        pytest.skip("kcat is not installed (Debian: apt-get install -y kcat); the Makefile's system-deps "
                    "target installs it")
    cid, sid = live_subscription(container.engine)
    at = (datetime.now(UTC) - timedelta(minutes=2)).isoformat().replace("+00:00", "Z")
    lines = []
    for n, micros in enumerate((250_000, 125_000)):
        tx = f"kcat-{uuid.uuid4().hex[:8]}-{n}"
        value = {"event_id": str(usage_event_id(cid, tx)), "type": "usage.recorded", "schema_version": 1,
                 "occurred_at": at, "producer": "kcat", "correlation_id": None,
                 "payload": {"transaction_id": tx, "customer_id": cid, "subscription_id": sid,
                             "event_type": "inference", "timestamp": at,
                             "properties": {"cost_usd_micros": micros}, "received_at": at}}
        lines.append(f"{sid}\t{orjson.dumps(value).decode()}")
    lines.append(lines[0])  # a re-sent message: deduplicated on (customer, transaction_id)
    source = tmp_path / "usage.txt"
    source.write_text("\n".join(lines) + "\n")

    subprocess.run([kcat, "-P", "-b", edge_settings.kafka_bootstrap, "-t", edge_settings.topic(topics.USAGE),
                    "-K", "\t", "-X", "acks=all", "-l", str(source)], check=True, timeout=30)

    body = wait_for_usage(edge_url, sid, "inference", Decimal(375_000), real_worker)
    [inference] = [m for m in body["meters"] if m["meter_id"] == "inference"]
    time.sleep(1.0)  # the duplicate, if it were counted, would show by now
    again = httpx.get(f"{edge_url}/v1/subscriptions/{sid}/usage",
                      headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
    assert Decimal(inference["quantity"]) == 375_000
    assert [Decimal(m["quantity"]) for m in again["meters"] if m["meter_id"] == "inference"] == [375_000]

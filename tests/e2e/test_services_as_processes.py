"""The three services as the operator runs them: `billing ingest`, `billing worker` and `billing dunning`,
each its own process (started as the demo starts them, `services.demo.processes`), talking only through
Kafka and PostgreSQL on the shared stack, on a simulated clock.

One billing month, the short way: two customers subscribe to the pro tier over HTTP, one card pays and one
declines; usage arrives over HTTP; then the billing clock jumps past the period end and past dunning's
give-up day in one step. The paying subscription's period is closed and its invoice paid; the declining
one is cancelled by dunning's give-up and never billed for a second period; the demo's invariants hold
(no duplicate invoice, totals equal their lines, every payment on its invoice, no usage counted twice...).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from services.demo.audit import run_invariants
from services.demo.population import GOOD_CARD, SOFT_DECLINE
from services.demo.processes import Quiescence, ServiceProcess, free_port, wait_http_ready
from shared.config import Settings

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
START = datetime(2026, 1, 1, tzinfo=UTC)
ADMIN_KEY = "e2e-admin-key"
PLAN = "pro"


@dataclass
class Pipeline:
    settings: Settings
    http: httpx.Client
    services: list[ServiceProcess]
    quiet: Quiescence

    def call(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        headers = {"Idempotency-Key": str(uuid.uuid4())} if method == "POST" else {}
        response = self.http.request(method, path, json=body, headers=headers)
        assert response.status_code == expect, f"{method} {path}: {response.status_code} {response.text[:500]}"
        return response.json()

    def all_alive(self) -> None:
        for service in self.services:
            assert service.alive(), f"{service.name} died; see {service.log_path}"


@pytest.fixture(scope="module")
def pipeline(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    port = free_port()
    simulated = settings.model_copy(update={
        "clock": "simulated", "simulated_clock_start": START.isoformat(), "payment_gateway": "simulated",
        "http_port": port, "scheduler_interval_s": 0.5, "log_json": False})
    env = {**simulated.to_env(), "BILLING_ADMIN_API_KEY": ADMIN_KEY, "PYTHONPATH": str(REPO)}
    logs = tmp_path_factory.mktemp("e2e-logs")
    services = [ServiceProcess(name, [name], env, logs / f"{name}.log") for name in ("ingest", "worker", "dunning")]
    engine = sa.create_engine(simulated.database_url, connect_args=simulated.sqlalchemy_connect_args, pool_size=2)
    quiet: Quiescence | None = None
    base_url = f"http://127.0.0.1:{port}"
    try:
        for service in services:
            service.start()
        wait_http_ready(base_url, services[0])
        quiet = Quiescence(simulated, engine, dunning_group=f"{simulated.topic_prefix}dunning")
        with httpx.Client(base_url=base_url, timeout=30,
                          headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
            yield Pipeline(simulated, http, services, quiet)
    finally:
        for service in services:
            service.stop()
        if quiet is not None:
            quiet.close()
        engine.dispose()


def wait_until(condition: Callable[[], Any], pipeline: Pipeline, what: str, timeout: float = 180.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pipeline.all_alive()
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"not reached within {timeout:.0f} s: {what}")


def onboard(pipeline: Pipeline, name: str, card: str) -> tuple[str, str]:
    customer = pipeline.call("POST", "/v1/customers", {
        "external_id": f"e2e-{name}-{uuid.uuid4().hex[:6]}", "kind": "user", "name": name,
        "email": f"{name}@example.com", "currency": "USD", "timezone": "UTC", "tax_rate_bps": 0,
        "payment_method_id": card}, expect=201)
    subscription = pipeline.call("POST", "/v1/subscriptions", {
        "customer_id": customer["customer_id"], "plan_id": PLAN, "seats": 1, "trial_days": 0,
        "payment_method_id": card}, expect=201)
    return customer["customer_id"], subscription["subscription_id"]


def invoices_of(pipeline: Pipeline, customer_id: str) -> list[dict[str, Any]]:
    page: list[dict[str, Any]] = pipeline.call("GET", f"/v1/customers/{customer_id}/invoices?limit=100")["data"]
    return page


def test_a_month_billed_by_the_three_services_as_processes(pipeline: Pipeline) -> None:
    payer, payer_sub = onboard(pipeline, "payer", GOOD_CARD)
    decliner, decliner_sub = onboard(pipeline, "decliner", SOFT_DECLINE)

    pipeline.call("POST", "/v1/clock/advance", {"hours": 3})  # the usage below happened since the start
    events = [{"transaction_id": f"e2e-inf-{n}", "customer_id": payer, "event_type": "inference",
               "timestamp": (START + timedelta(hours=2, minutes=n)).isoformat(),
               "properties": {"cost_usd_micros": 1_500_000}} for n in range(3)]
    answer = pipeline.call("POST", "/v1/ingest", events)
    assert (answer["accepted"], answer["rejected"]) == (3, 0), answer["results"]
    wait_until(lambda: [i["status"] for i in invoices_of(pipeline, payer)] == ["paid"], pipeline,
               "the payer's first period invoiced in advance and paid")
    pipeline.quiet.wait()

    # One jump past the period end (Feb 1) and dunning's give-up day (Jan 15): what fell due applies in
    # billing-time order, so the declining subscription is cancelled before a close could bill it again.
    pipeline.call("POST", "/v1/clock/advance", {"days": 32})

    def closed() -> list[dict[str, Any]]:
        return [i for i in invoices_of(pipeline, payer) if i["kind"] == "period_close" and i["status"] == "paid"]

    closes = wait_until(closed, pipeline, "the payer's January closed and its invoice paid")
    wait_until(lambda: pipeline.call("GET", f"/v1/subscriptions/{decliner_sub}")["status"] == "cancelled",
               pipeline, "the decliner's subscription cancelled by dunning's give-up")
    pipeline.quiet.wait()

    payer_invoices = invoices_of(pipeline, payer)
    assert sorted((i["kind"], i["status"]) for i in payer_invoices) == \
        [("period_close", "paid"), ("subscription_start", "paid")], payer_invoices
    assert closes[0]["period_start"].startswith("2026-01-01") and closes[0]["period_end"].startswith("2026-02-01")
    subscription = pipeline.call("GET", f"/v1/subscriptions/{payer_sub}")
    assert (subscription["status"], subscription["current_period_start"][:10]) == ("active", "2026-02-01")
    decliner_invoices = invoices_of(pipeline, decliner)  # never closed: cancelled first, in billing-time order
    assert [i["kind"] for i in decliner_invoices] == ["subscription_start"], decliner_invoices
    assert decliner_invoices[0]["status"] != "paid"
    close = pipeline.call("GET", f"/v1/invoices/{closes[0]['invoice_id']}")
    inference = [line for line in close["lines"] if line["kind"] == "usage" and line["meter_id"] == "inference"]
    assert sum(Decimal(str(line["quantity"])) for line in inference) == 3 * 1_500_000, close["lines"]

    engine = sa.create_engine(pipeline.settings.database_url, connect_args=pipeline.settings.sqlalchemy_connect_args)
    try:
        broken = {name: held for name, held in run_invariants(engine).items() if held is not True}
    finally:
        engine.dispose()
    assert broken == {}
    pipeline.all_alive()

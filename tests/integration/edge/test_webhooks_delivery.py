"""Outgoing webhooks end to end (issue 15, item 6): endpoints registered through the API, a billing month
through the REAL billing worker (a subprocess), the webhooks service (fan-out consumer + dispatcher, in this
process) on real Kafka and PostgreSQL, and a local HTTP receiver (a thread) that verifies every signature.

The flow: a 10.00 monthly plan paid in advance with pm_card_visa (simulated gateway). Subscribing gives
subscription.created, invoice.finalized (10.00), invoice.paid; the period close 31 days later gives
invoice.finalized (next period's 10.00) and invoice.paid. Endpoint A takes every event and is down for about
18 minutes of the billing clock (500s, then dropped connections) with retries at +1, +2, +4, +8 minutes;
endpoint B takes the invoice events and subscription.created and is up; endpoint C is disabled before anything
happens. Every event reaches A and B exactly once, in order; C gets nothing; a manual redelivery sends an
event again with the same id, signed with the rotated secret.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from services.ingest.container import Container
from services.webhooks.bootstrap import WebhooksService, build_webhooks
from shared.adapters.postgres.schema.edge import audit_log
from shared.adapters.postgres.schema.webhooks import webhook_deliveries, webhook_delivery_attempts
from shared.adapters.webhooks.signing import HEADER, SignatureVerificationError, verify_signature

from .conftest import ADMIN, call, catalogs_with, onboard, real_worker_settings, until

pytestmark = pytest.mark.integration
FEE_PLAN = ("version: 1\ndescription: a 10.00 monthly fee (test only)\ncurrency: USD\nplans:\n"
            "  - {id: fee10, name: Fee10, family: classic, interval: month, price: '10.00'}\n")
SUBSCRIBING = ["subscription.created", "invoice.finalized", "invoice.paid"]
PERIOD_CLOSE = ["invoice.finalized", "invoice.paid"]


class Receiver:
    """A webhook receiver per path: `modes[path]` is up (200), down (500) or drop (connection closed with no
    answer). Records every request; a signature that does not verify is recorded and answered 400."""

    def __init__(self) -> None:
        self.modes: dict[str, str] = {}
        self.secrets: dict[str, str] = {}
        self.received: list[dict[str, Any]] = []
        self.bad_signatures: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                path = self.path
                try:
                    verify_signature(body, self.headers.get(HEADER), receiver.secrets[path], 300)
                except SignatureVerificationError as exc:
                    receiver.bad_signatures.append(f"{path}: {exc}")
                    self.send_response(400)
                    self.end_headers()
                    return
                mode = receiver.modes.get(path, "up")
                event = json.loads(body)
                receiver.received.append({"path": path, "mode": mode, "id": event["id"], "type": event["type"],
                                          "subscription_id": event["data"].get("subscription_id"),
                                          "data": event["data"],
                                          "body": body, "signature": self.headers.get(HEADER)})
                if mode == "drop":
                    self.close_connection = True
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                self.send_response(200 if mode == "up" else 500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def delivered(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.received if r["path"] == path and r["mode"] == "up"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def edge_settings(settings, tmp_path_factory):  # type: ignore[no-untyped-def]
    catalogs = catalogs_with(tmp_path_factory, "fee_plan.yaml", FEE_PLAN)
    return real_worker_settings(settings, catalog_dir=catalogs)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


@pytest.fixture(scope="module")
def webhooks(edge_settings, container) -> Iterator[WebhooksService]:  # type: ignore[no-untyped-def]
    service = build_webhooks(edge_settings, group_id=f"webhooks-{uuid.uuid4().hex[:8]}", http_timeout=2.0,
                             concurrency=4, dispatch_interval=0.2)
    stop = threading.Event()
    service.start(stop)
    yield service
    stop.set()
    service.join()


async def register(client: httpx.AsyncClient, receiver: Receiver, path: str, events: list[str]) -> dict[str, Any]:
    response = await client.post("/v1/webhook-endpoints", json={"url": receiver.url(path), "events": events},
                                 headers={**ADMIN, "Idempotency-Key": f"register-{uuid.uuid4()}"})
    assert response.status_code == 201, response.text
    created = dict(response.json())
    receiver.secrets[path] = created["secret"]
    return created


def attempts_of(engine: sa.Engine, endpoint_id: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(
            sa.select(sa.func.count()).select_from(webhook_delivery_attempts.join(webhook_deliveries))
            .where(webhook_deliveries.c.endpoint_id == endpoint_id)).scalar_one())


async def advance(client: httpx.AsyncClient, seconds: int) -> None:
    moved = await client.post("/v1/clock/advance", json={"seconds": seconds}, headers=ADMIN)
    assert moved.status_code == 200, moved.text


async def test_every_event_of_a_billing_month_reaches_each_endpoint_once_in_order_after_an_outage(
        client: httpx.AsyncClient, container: Container, receiver: Receiver, webhooks: WebhooksService,
        real_worker: subprocess.Popen[bytes]) -> None:
    a = await register(client, receiver, "/a", ["*"])
    b = await register(client, receiver, "/b", ["subscription.created", "invoice.finalized", "invoice.paid"])
    c = await register(client, receiver, "/c", ["*"])
    disabled = await client.delete(f"/v1/webhook-endpoints/{c['endpoint_id']}", headers=ADMIN)
    assert (disabled.status_code, disabled.json()["enabled"], disabled.json()["disabled_reason"]) == (
        200, False, "api")
    receiver.modes["/a"] = "down"

    customer = await onboard(client, payment_method_id="pm_card_visa")
    created = await call(client, "POST", "/v1/subscriptions",
                            {"customer_id": customer["customer_id"], "plan_id": "fee10"})
    assert created.status_code == 201, created.text
    sid = created.json()["subscription_id"]

    async def b_has(count: int) -> bool:
        return len(receiver.delivered("/b")) >= count
    await until(lambda: b_has(3), "deliveries to B while A is down")  # A's outage holds nothing back
    assert not receiver.delivered("/a")

    # A fails for ~18 minutes of the billing clock: 500 twice, then dropped connections twice
    async def a_tried(count: int) -> bool:
        return attempts_of(container.engine, a["endpoint_id"]) >= count
    await until(lambda: a_tried(1), "a first attempt to A")
    for tries, (seconds, mode) in enumerate([(70, "down"), (140, "drop"), (280, "drop"), (560, "drop")], 2):
        receiver.modes["/a"] = mode
        await advance(client, seconds)
        await until(lambda t=tries: a_tried(t), f"attempt {tries} to A")
    assert not receiver.delivered("/a")
    receiver.modes["/a"] = "up"
    await advance(client, 1100)  # past the 8-minute (+-10 %) wait after the fifth failure

    async def a_has(count: int) -> bool:
        return len(receiver.delivered("/a")) >= count
    await until(lambda: a_has(3), "A's deliveries after its outage")

    await advance(client, 31 * 86_400)  # the period (10 Mar -> 10 Apr) closes
    await until(lambda: a_has(5), "the period close's events at A")
    await until(lambda: b_has(5), "the period close's events at B")
    await asyncio.sleep(1.0)  # nothing more may arrive

    for path in ("/a", "/b"):
        got = receiver.delivered(path)
        assert [r["type"] for r in got] == SUBSCRIBING + PERIOD_CLOSE, path
        assert len({r["id"] for r in got}) == len(got), f"an event delivered twice to {path}"
        assert {r["subscription_id"] for r in got} == {sid}
    assert [r["id"] for r in receiver.delivered("/a")] == [r["id"] for r in receiver.delivered("/b")]
    assert receiver.bad_signatures == []
    assert [r for r in receiver.received if r["path"] == "/c"] == []

    log = (await client.get(f"/v1/webhook-endpoints/{a['endpoint_id']}/deliveries", headers=ADMIN)).json()
    assert [d["event_type"] for d in reversed(log["data"])] == SUBSCRIBING + PERIOD_CLOSE
    assert {d["status"] for d in log["data"]} == {"delivered"}
    first = log["data"][-1]
    assert [(x["succeeded"], x["status_code"]) for x in first["attempt_log"]] == [
        (False, 500), (False, 500), (False, None), (False, None), (False, None), (True, 200)]
    # a credit note of 1.00 on the paid first invoice: credit_note.created to A (B did not subscribe to it)
    first_invoice = receiver.delivered("/a")[1]["data"]["invoice_id"]
    note = await call(client, "POST", f"/v1/invoices/{first_invoice}/credit-notes",
                         {"amount_minor": 100, "reason": "order_change"})
    assert note.status_code == 201, note.text
    await until(lambda: a_has(6), "credit_note.created at A")
    created_note = receiver.delivered("/a")[5]
    assert (created_note["type"], created_note["data"]["credit_note_id"], created_note["data"]["total_minor"]) == (
        "credit_note.created", note.json()["credit_note_id"], 100)
    assert len(receiver.delivered("/b")) == 5

    with container.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(webhook_deliveries)
                            .where(webhook_deliveries.c.endpoint_id == c["endpoint_id"])).scalar_one() == 0

    # manual redelivery: the same event id again, signed with the rotated secret and, for the hour of grace
    # asked for, with the previous one too
    rotated = await client.post(f"/v1/webhook-endpoints/{b['endpoint_id']}/rotate-secret",
                                json={"expire_previous_in_seconds": 3600}, headers=ADMIN)
    assert rotated.status_code == 200 and rotated.json()["secret"] != b["secret"], rotated.text
    assert rotated.json()["previous_secret_expires_at"] is not None
    receiver.secrets["/b"] = rotated.json()["secret"]
    b_log = (await client.get(f"/v1/webhook-endpoints/{b['endpoint_id']}/deliveries",
                              params={"status": "delivered", "limit": 2}, headers=ADMIN)).json()
    assert len(b_log["data"]) == 2 and b_log["next_cursor"] is not None
    paid = b_log["data"][0]
    assert paid["event_type"] == "invoice.paid"
    again = await client.post(f"/v1/webhook-deliveries/{paid['delivery_id']}/redeliver", headers=ADMIN)
    assert again.status_code == 202, again.text
    await until(lambda: b_has(6), "the redelivery")
    redelivered = receiver.delivered("/b")[-1]
    assert redelivered["id"] == paid["event_id"] == receiver.delivered("/b")[-2]["id"]
    assert receiver.bad_signatures == []
    for secret in (rotated.json()["secret"], b["secret"]):  # both sign during the grace
        verify_signature(redelivered["body"], redelivered["signature"], secret, 300)
    assert redelivered["signature"].count("v1=") == 2
    log_b = (await client.get(f"/v1/webhook-endpoints/{b['endpoint_id']}/deliveries", headers=ADMIN)).json()
    redone = next(d for d in log_b["data"] if d["delivery_id"] == paid["delivery_id"])
    assert [x["manual"] for x in redone["attempt_log"]] == [False, True]
    assert redone["redeliver_requested_at"] is None


async def test_endpoint_writes_are_validated_admin_only_idempotent_and_audited(
        client: httpx.AsyncClient, container: Container) -> None:
    bad = await client.post("/v1/webhook-endpoints", json={"url": "ftp://example.test/x", "events": ["nope"]},
                            headers=ADMIN)
    assert bad.status_code == 422, bad.text
    assert {e["field"] for e in bad.json()["errors"]} == {"url", "events"}
    star = await client.post("/v1/webhook-endpoints", json={"url": "https://x.test", "events": ["*", "invoice.paid"]},
                             headers=ADMIN)
    assert star.status_code == 422 and star.json()["errors"][0]["field"] == "events", star.text

    key = {**ADMIN, "Idempotency-Key": f"k-{uuid.uuid4()}"}
    body = {"url": "https://hooks.example.test/billing", "events": ["invoice.paid"], "description": "books"}
    first = await client.post("/v1/webhook-endpoints", json=body, headers=key)
    replay = await client.post("/v1/webhook-endpoints", json=body, headers=key)
    assert first.status_code == replay.status_code == 201
    assert replay.json() == first.json() and replay.headers.get("Idempotent-Replayed") == "true"
    endpoint_id = first.json()["endpoint_id"]
    assert first.json()["secret"].startswith("whsec_")

    read = await client.get(f"/v1/webhook-endpoints/{endpoint_id}", headers=ADMIN)
    assert read.status_code == 200 and "secret" not in read.json()
    patched = await client.patch(f"/v1/webhook-endpoints/{endpoint_id}",
                                 json={"events": ["*"], "enabled": False}, headers=ADMIN)
    assert (patched.json()["events"], patched.json()["enabled"]) == (["*"], False), patched.text
    enabled = await client.patch(f"/v1/webhook-endpoints/{endpoint_id}", json={"enabled": True}, headers=ADMIN)
    assert enabled.json()["enabled"] and enabled.json()["disabled_reason"] is None

    listed = (await client.get("/v1/webhook-endpoints", headers=ADMIN)).json()["data"]
    assert endpoint_id in {e["endpoint_id"] for e in listed}
    unknown = await client.get("/v1/webhook-endpoints/we_nope", headers=ADMIN)
    assert (unknown.status_code, unknown.json()["type"], unknown.json()["code"]) == (
        404, "/problems/not-found", "unknown_webhook_endpoint")
    no_delivery = await client.post(f"/v1/webhook-deliveries/{uuid.uuid4()}/redeliver", headers=ADMIN)
    assert (no_delivery.status_code, no_delivery.json()["code"]) == (404, "unknown_webhook_delivery")
    bad_status = await client.get(f"/v1/webhook-endpoints/{endpoint_id}/deliveries?status=lost", headers=ADMIN)
    assert bad_status.status_code == 422

    anonymous = await client.post("/v1/webhook-endpoints", json=body)
    assert anonymous.status_code == 401

    with container.engine.connect() as conn:
        actions = [row.action for row in conn.execute(
            sa.select(audit_log.c.action).where(audit_log.c.details["endpoint_id"].astext == endpoint_id)
            .order_by(audit_log.c.id))]
    assert actions == ["webhook_endpoint.create", "webhook_endpoint.update", "webhook_endpoint.update"]

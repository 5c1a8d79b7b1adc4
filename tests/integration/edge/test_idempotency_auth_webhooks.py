"""Idempotency-Key semantics, the authorisation matrix, Stripe webhooks, the clock, reads and health."""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from datetime import timedelta

import httpx
import orjson
import pytest
from pydantic import SecretStr

from services.ingest.app import create_app
from services.ingest.bootstrap import build_container
from services.ingest.idempotency import IdempotencyStore, fingerprint
from shared.adapters.postgres.schema.billing import invoice_lines, invoices
from shared.contracts import topics
from shared.contracts.envelope import Envelope
from shared.contracts.messages import CustomerDeleted, PaymentFailed, PaymentSucceeded, parse_payload

from .conftest import ADMIN, START, bearer, consume, new_key, onboard, subscribe

pytestmark = pytest.mark.integration


# ------------------------------------------------------------------------------------------ idempotency


def _body(external_id: str, name: str = "Acme") -> dict[str, str]:
    return {"external_id": external_id, "kind": "user", "name": name, "email": "a@b.test", "currency": "USD"}


async def test_the_same_idempotency_key_and_body_replays_the_first_response(client):
    key, external_id = uuid.uuid4().hex, f"ext-{uuid.uuid4().hex[:8]}"
    first = await client.post("/v1/customers", json=_body(external_id), headers={**ADMIN, "Idempotency-Key": key})
    again = await client.post("/v1/customers", json=_body(external_id), headers={**ADMIN, "Idempotency-Key": key})

    assert (first.status_code, again.status_code) == (201, 201)
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers


async def test_the_same_idempotency_key_with_another_body_is_refused_with_422(client):
    key = uuid.uuid4().hex
    await client.post("/v1/customers", json=_body(f"ext-{uuid.uuid4().hex[:8]}"),
                      headers={**ADMIN, "Idempotency-Key": key})
    other = await client.post("/v1/customers", json=_body(f"ext-{uuid.uuid4().hex[:8]}"),
                              headers={**ADMIN, "Idempotency-Key": key})

    assert other.status_code == 422
    assert other.json()["type"] == "/problems/idempotency-key-reused"


async def test_a_retry_while_the_first_request_is_in_flight_gets_409(client, container):
    key, body = uuid.uuid4().hex, _body(f"ext-{uuid.uuid4().hex[:8]}")
    raw = orjson.dumps(body)
    # The first request is "in flight": its row was claimed and not completed yet.
    IdempotencyStore(container.engine).begin("admin-bootstrap", key, fingerprint("POST", "/v1/customers", "", raw))

    retry = await client.post("/v1/customers", content=raw,
                              headers={**ADMIN, "Idempotency-Key": key, "content-type": "application/json"})

    assert retry.status_code == 409
    assert retry.headers["retry-after"] == "1"


async def test_idempotency_keys_are_scoped_per_caller(client):
    customer = await onboard(client)
    reader = await new_key(client, ["read"], org_id=customer["customer_id"])
    key = uuid.uuid4().hex
    admin_call = await client.post("/v1/clock/advance", json={"seconds": 1}, headers={**ADMIN, "Idempotency-Key": key})
    reader_call = await client.post("/v1/clock/advance", json={"seconds": 1},
                                    headers={**bearer(reader), "Idempotency-Key": key})

    assert admin_call.status_code == 200
    assert reader_call.status_code == 403  # not a replay of the admin's response


# ------------------------------------------------------------------------------------------ authorisation


async def test_requests_without_a_valid_key_get_401(client):
    missing = await client.get("/v1/customers", headers={})
    wrong = await client.get("/v1/customers", headers=bearer("bk_not-a-key"))

    assert (missing.status_code, wrong.status_code) == (401, 401)
    assert missing.headers["www-authenticate"] == "Bearer"


async def test_an_ingest_key_cannot_subscribe_read_or_manage_keys(client):
    customer = await onboard(client)
    ingest_key = bearer(await new_key(client, ["ingest"], org_id=customer["customer_id"]))

    subscribe_ = await client.post("/v1/subscriptions", json={"customer_id": customer["customer_id"],
                                                               "plan_id": "pro"}, headers=ingest_key)
    read = await client.get(f"/v1/customers/{customer['customer_id']}", headers=ingest_key)
    keys = await client.post("/v1/api-keys", json={"name": "x", "scopes": ["admin"]}, headers=ingest_key)

    assert (subscribe_.status_code, read.status_code, keys.status_code) == (403, 403, 403)


async def test_an_org_read_key_sees_its_org_and_nothing_of_another(client, worker):
    org_a, org_b = await onboard(client), await onboard(client)
    sub_b = await subscribe(client, org_b["customer_id"], "pro")
    key_a = bearer(await new_key(client, ["read"], org_id=org_a["customer_id"]))

    own = await client.get(f"/v1/customers/{org_a['customer_id']}", headers=key_a)
    others = [await client.get(path, headers=key_a) for path in (
        f"/v1/customers/{org_b['customer_id']}", f"/v1/customers/{org_b['customer_id']}/invoices",
        f"/v1/customers/{org_b['customer_id']}/subscriptions", f"/v1/subscriptions/{sub_b['subscription_id']}",
        f"/v1/subscriptions/{sub_b['subscription_id']}/credits", f"/v1/customers/{org_b['customer_id']}/audit")]
    cancel_b = await client.post(f"/v1/subscriptions/{sub_b['subscription_id']}/cancel", json={}, headers=key_a)

    assert own.status_code == 200
    assert [r.status_code for r in others] == [403] * 6
    assert cancel_b.status_code == 403


async def test_a_revoked_key_stops_working(client, app):
    customer = await onboard(client)
    created = await client.post("/v1/api-keys", json={"name": "r", "scopes": ["read"],
                                                      "org_id": customer["customer_id"]}, headers=ADMIN)
    token, key_id = created.json()["token"], created.json()["key_id"]
    assert (await client.get(f"/v1/customers/{customer['customer_id']}", headers=bearer(token))).status_code == 200

    assert (await client.post(f"/v1/api-keys/{key_id}/revoke", headers=ADMIN)).status_code == 200
    assert (await client.get(f"/v1/customers/{customer['customer_id']}", headers=bearer(token))).status_code == 401


async def test_key_bindings_are_validated(client):
    unbound_read = await client.post("/v1/api-keys", json={"name": "x", "scopes": ["read"]}, headers=ADMIN)
    assert unbound_read.status_code == 422


# ------------------------------------------------------------------------------------------ webhooks


def _signed(payload: bytes, secret: str, at: int) -> dict[str, str]:
    signature = hmac.new(secret.encode(), f"{at}.".encode() + payload, hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={at},v1={signature}", "content-type": "application/json"}


def _stripe_event(kind: str, obj: dict[str, object]) -> bytes:
    return orjson.dumps({"id": f"evt_{uuid.uuid4().hex[:16]}", "type": kind, "created": int(time.time()),
                         "data": {"object": obj}})


async def test_a_signed_payment_webhook_becomes_a_payment_message_once(client, container, edge_settings):
    secret = container.settings.stripe_webhook_secret.get_secret_value()
    sid = f"sub_{uuid.uuid4().hex[:8]}"
    payload = _stripe_event("payment_intent.succeeded", {
        "id": "pi_123", "object": "payment_intent", "amount": 900, "amount_received": 900, "currency": "usd",
        "metadata": {"subscription_id": sid, "invoice_id": "in_1", "attempt_id": "att_1"}})
    failed = _stripe_event("payment_intent.payment_failed", {
        "id": "pi_124", "amount": 900, "currency": "usd", "last_payment_error": {"decline_code": "stolen_card"},
        "metadata": {"subscription_id": sid, "invoice_id": "in_2"}})

    now = int(time.time())
    first = await client.post("/v1/webhooks/stripe", content=payload, headers=_signed(payload, secret, now))
    again = await client.post("/v1/webhooks/stripe", content=payload, headers=_signed(payload, secret, now))
    declined = await client.post("/v1/webhooks/stripe", content=failed, headers=_signed(failed, secret, now))

    assert (first.json()["status"], again.json()["status"], declined.json()["status"]) == (
        "published", "duplicate", "published")
    mine = [parse_payload(Envelope.from_bytes(m.value())) for m in consume(edge_settings, topics.PAYMENTS, 50, 5)
            if m.key().decode() == sid]
    assert len(mine) == 2
    succeeded, payment_failed = mine
    assert isinstance(succeeded, PaymentSucceeded) and succeeded.amount_minor == 900 and succeeded.currency == "USD"
    assert isinstance(payment_failed, PaymentFailed) and payment_failed.hard_decline


async def test_a_deleted_stripe_customer_becomes_a_payments_message_per_live_subscription(
        client, worker, container, edge_settings):
    deleted, other = await onboard(client), await onboard(client)
    first = await subscribe(client, deleted["customer_id"], "pro")
    second = await subscribe(client, deleted["customer_id"], "team", seats=2)
    untouched = await subscribe(client, other["customer_id"], "pro")
    payload = _stripe_event("customer.deleted", {"id": deleted["stripe_customer_id"], "object": "customer",
                                                 "deleted": True})
    secret = container.settings.stripe_webhook_secret.get_secret_value()

    response = await client.post("/v1/webhooks/stripe", content=payload,
                                 headers=_signed(payload, secret, int(time.time())))

    assert response.json() == {"received": True, "status": "published", "messages": 2}
    ours = {first["subscription_id"], second["subscription_id"], untouched["subscription_id"]}
    messages = [m for m in consume(edge_settings, topics.PAYMENTS, 200, 5) if m.key().decode() in ours]
    envelopes = [Envelope.from_bytes(m.value()) for m in messages]
    assert {e.type for e in envelopes} == {"payment.customer_deleted"}
    payloads = [parse_payload(e) for e in envelopes]
    assert all(isinstance(p, CustomerDeleted) for p in payloads)
    assert {(m.key().decode(), p.subscription_id, p.customer_id, p.stripe_customer_id)  # type: ignore[attr-defined]
            for m, p in zip(messages, payloads, strict=True)} == {
        (sub["subscription_id"], sub["subscription_id"], deleted["customer_id"], deleted["stripe_customer_id"])
        for sub in (first, second)}


@pytest.mark.parametrize(("secret", "skew"), [("whsec_wrong", 0), (None, -600), (None, 600)],
                         ids=["wrong secret", "stale", "future"])
async def test_a_webhook_with_a_bad_signature_gets_400_and_produces_nothing(client, container, secret, skew):
    good = container.settings.stripe_webhook_secret.get_secret_value()
    payload = _stripe_event("payment_intent.succeeded", {"id": "pi_9", "amount": 1, "currency": "usd",
                                                         "metadata": {"subscription_id": "s", "invoice_id": "i"}})
    response = await client.post("/v1/webhooks/stripe", content=payload,
                                 headers=_signed(payload, secret or good, int(time.time()) + skew))

    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"


async def test_webhook_secrets_can_be_rotated(edge_settings):
    rotated = edge_settings.model_copy(update={"stripe_webhook_secret": SecretStr("whsec_new,whsec_old")})
    container = build_container(rotated)
    container.producer.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(container)),
                                     base_url="http://edge") as http:
            payload = _stripe_event("customer.updated", {"id": "cus_1"})
            response = await http.post("/v1/webhooks/stripe", content=payload,
                                       headers=_signed(payload, "whsec_old", int(time.time())))
        assert response.json()["status"] == "ignored"
    finally:
        container.producer.close()
        container.engine.dispose()


# ------------------------------------------------------------------------------------------ clock, reads, health


async def test_the_simulated_clock_advances_for_admins_only(client):
    before = (await client.get("/v1/clock", headers=ADMIN)).json()["now"]
    moved = await client.post("/v1/clock/advance", json={"days": 1}, headers=ADMIN)

    assert moved.status_code == 200
    assert moved.json()["now"] > before


async def test_a_real_clock_cannot_be_advanced(edge_settings):
    container = build_container(edge_settings.model_copy(update={"clock": "real"}))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(container)),
                                     base_url="http://edge") as http:
            response = await http.post("/v1/clock/advance", json={"days": 1}, headers=ADMIN)
        assert response.status_code == 409
    finally:
        container.engine.dispose()


async def test_invoices_are_read_with_their_lines(client, worker, container):
    customer = await onboard(client)
    sub = await subscribe(client, customer["customer_id"], "pro")
    invoice_id = f"in_{uuid.uuid4().hex[:8]}"
    # Stand-in for the worker's finalised invoice (the worker owns these tables).
    with container.engine.begin() as conn:
        conn.execute(invoices.insert().values(
            invoice_id=invoice_id, subscription_id=sub["subscription_id"], customer_id=customer["customer_id"],
            kind="period_close", period_start=START, period_end=START + timedelta(days=31), status="open",
            number="INV-1",
            currency="USD", subtotal_minor=900, total_minor=900, amount_due_minor=900))
        conn.execute(invoice_lines.insert().values(invoice_id=invoice_id, line_no=1, kind="fee", description="Pro",
                                                   amount_minor=900, currency="USD"))
    reader = bearer(await new_key(client, ["read"], org_id=customer["customer_id"]))

    listed = await client.get(f"/v1/customers/{customer['customer_id']}/invoices", headers=reader)
    one = await client.get(f"/v1/invoices/{invoice_id}", headers=reader)

    assert [i["invoice_id"] for i in listed.json()["data"]] == [invoice_id]
    assert one.json()["lines"][0]["amount_minor"] == 900 and one.json()["total_minor"] == 900


async def test_the_audit_trail_names_the_key_that_acted(client, worker):
    customer = await onboard(client)
    await subscribe(client, customer["customer_id"], "pro")
    trail = await client.get(f"/v1/customers/{customer['customer_id']}/audit", headers=ADMIN)

    assert [(e["action"], e["actor_key_id"]) for e in trail.json()["data"]] == [
        ("customer.onboard", "admin-bootstrap"), ("subscription.create", "admin-bootstrap")]


async def test_health_readiness_metrics_and_openapi_are_served(client):
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"postgres": True, "kafka": True}
    metrics = await client.get("/metrics")
    assert "edge_http_requests_total" in metrics.text
    spec = (await client.get("/openapi.json")).json()
    assert "/v1/ingest" in spec["paths"] and "UsageEvent" in spec["components"]["schemas"]


async def test_unknown_routes_answer_with_a_problem_document(client):
    response = await client.get("/v1/nothing-here", headers=ADMIN)
    assert response.status_code == 404 and response.headers["content-type"] == "application/problem+json"

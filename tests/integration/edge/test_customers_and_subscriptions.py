"""Onboarding (Stripe customer via stripe-mock, idempotent), the card-number refusal, and each
subscription command round trip through commands.v1 (answered by the stand-in worker, see conftest)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import sqlalchemy as sa

from shared.adapters.postgres.schema.core import customer_aliases, customers, org_members, outbox
from shared.adapters.postgres.schema.edge import audit_log

from .conftest import ADMIN, onboard, subscribe

pytestmark = pytest.mark.integration


async def test_onboarding_an_org_creates_the_stripe_customer_and_attaches_the_payment_method(client, container):
    customer = await onboard(client, aliases=["acme-hub", "acme-inference"], timezone="Europe/Paris",
                             tax_rate_bps=2000, payment_method_id="pm_card_visa",
                             members=[{"user_id": "u1", "email": "a@acme.test", "role": "owner"}, {"user_id": "u2"}])

    assert customer["stripe_customer_id"].startswith("cus_")
    assert customer["default_payment_method_id"] == "pm_card_visa"
    assert customer["aliases"] == ["acme-hub", "acme-inference"]
    assert [m["user_id"] for m in customer["members"]] == ["u1", "u2"]
    # stripe-mock is stateless: retrieving answers for any well-formed id, so this proves the id and the call.
    at_stripe = container.stripe.v1.customers.retrieve(customer["stripe_customer_id"])
    assert at_stripe.id == customer["stripe_customer_id"]
    with container.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(customer_aliases)
                            .where(customer_aliases.c.customer_id == customer["customer_id"])).scalar() == 2
        assert conn.execute(sa.select(sa.func.count()).select_from(org_members)
                            .where(org_members.c.customer_id == customer["customer_id"])).scalar() == 2
        assert conn.execute(sa.select(audit_log.c.action).where(
            audit_log.c.customer_id == customer["customer_id"])).scalars().all() == ["customer.onboard"]


async def test_retrying_an_onboarding_never_creates_a_second_stripe_customer(client):
    external_id = f"ext-{uuid.uuid4().hex[:8]}"
    first = await onboard(client, external_id)
    second = await onboard(client, external_id)

    assert second["customer_id"] == first["customer_id"]
    assert second["stripe_customer_id"] == first["stripe_customer_id"]


async def test_onboarding_the_same_external_id_with_other_data_is_a_conflict(client):
    external_id = f"ext-{uuid.uuid4().hex[:8]}"
    await onboard(client, external_id)
    response = await client.post("/v1/customers", headers=ADMIN, json={
        "external_id": external_id, "kind": "org", "name": "Other name", "email": "billing@acme.test",
        "currency": "USD"})

    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"] == [{"field": "name", "reason": "differs from the onboarded customer"}]


async def test_a_card_number_in_any_field_is_refused_and_neither_echoed_nor_stored(client, container):
    external_id = f"ext-{uuid.uuid4().hex[:8]}"
    response = await client.post("/v1/customers", headers=ADMIN, json={
        "external_id": external_id, "kind": "user", "name": "Card 4242 4242 4242 4242", "email": "x@y.test",
        "currency": "USD"})

    assert response.status_code == 422
    assert response.json()["errors"] == [{"field": "name", "reason": "looks like a payment card number"}]
    assert "4242" not in response.text
    with container.engine.connect() as conn:
        assert conn.execute(sa.select(customers).where(customers.c.external_id == external_id)).first() is None


async def test_a_long_number_that_fails_the_luhn_check_is_not_mistaken_for_a_card(client):
    customer = await onboard(client, name="Order 4242 4242 4242 4241")
    assert customer["name"] == "Order 4242 4242 4242 4241"


async def test_invalid_onboarding_fields_come_back_as_problem_field_errors(client):
    response = await client.post("/v1/customers", headers=ADMIN, json={
        "external_id": "x", "kind": "robot", "name": "A", "email": "not-an-email", "currency": "usd",
        "timezone": "Mars/Olympus"})

    assert response.status_code == 422
    fields = {e["field"] for e in response.json()["errors"]}
    assert fields == {"kind", "email", "currency", "timezone"}


async def test_each_subscription_command_round_trips_through_the_worker(client, worker):
    customer = await onboard(client, payment_method_id="pm_card_visa")
    created = await subscribe(client, customer["customer_id"], "team", seats=3)
    sid = created["subscription_id"]
    assert (created["plan_id"], created["seats"], created["status"]) == ("team", 3, "active")
    assert created["payment_method_id"] == "pm_card_visa"

    steps = [("change-plan", {"plan_id": "enterprise"}, "plan_id", "enterprise"),
             ("seats", {"seats": 5}, "seats", 5),
             ("pause", None, "status", "paused"),
             ("resume", None, "status", "active"),
             ("cancel", {"at_period_end": True}, "cancel_at_period_end", True),
             ("cancel", {"at_period_end": False}, "status", "cancelled")]
    for path, body, field, expected in steps:
        response = await client.post(f"/v1/subscriptions/{sid}/{path}", json=body, headers=ADMIN)
        assert response.status_code == 200, (path, response.text)
        assert response.json()[field] == expected, path

    published = [e.type for e in worker.seen if e.payload["subscription_id"] == sid]
    assert published == ["subscription.create", "subscription.change_plan", "subscription.change_seats",
                         "subscription.pause", "subscription.resume", "subscription.cancel", "subscription.cancel"]
    snapshot = next(e for e in worker.seen if e.payload["subscription_id"] == sid).payload
    assert (snapshot["currency"], snapshot["timezone"]) == ("USD", "UTC")


async def test_a_command_the_worker_rejects_comes_back_as_409_with_the_reason(client, worker):
    customer = await onboard(client)
    sid = (await subscribe(client, customer["customer_id"]))["subscription_id"]

    response = await client.post(f"/v1/subscriptions/{sid}/resume", headers=ADMIN)

    assert response.status_code == 409
    problem = response.json()
    assert problem["type"] == "/problems/rejected/invalid_transition"
    assert "cannot subscription.resume" in problem["detail"]


async def test_a_command_not_answered_in_time_gets_202_and_a_poll_url_that_resolves_later(client, worker, container):
    customer = await onboard(client)
    sid = (await subscribe(client, customer["customer_id"]))["subscription_id"]
    worker.silent.add(sid)

    response = await client.post(f"/v1/subscriptions/{sid}/pause", headers=ADMIN)

    assert response.status_code == 202
    pending = response.json()
    assert pending["status"] == "pending" and response.headers["location"] == pending["poll_url"]
    command = next(e for e in reversed(worker.seen) if e.type == "subscription.pause"
                   and e.payload["subscription_id"] == sid)
    worker.silent.discard(sid)
    await asyncio.to_thread(worker._answer, command)
    polled = await client.get(pending["poll_url"], headers=ADMIN)
    assert polled.status_code == 200
    assert polled.json()["status"] == "applied"
    assert polled.json()["subscription"]["status"] == "paused"


async def test_subscribing_to_an_unknown_plan_or_customer_is_refused_before_anything_is_published(client, worker):
    customer = await onboard(client)
    unknown_plan = await client.post("/v1/subscriptions", headers=ADMIN,
                                     json={"customer_id": customer["customer_id"], "plan_id": "platinum"})
    unknown_customer = await client.post("/v1/subscriptions", headers=ADMIN,
                                         json={"customer_id": "cust_nobody", "plan_id": "pro"})

    assert unknown_plan.status_code == 422
    assert unknown_plan.json()["errors"][0]["field"] == "plan_id"
    assert unknown_customer.status_code == 404


async def test_subscribing_to_a_plan_sold_in_another_currency_is_refused_and_nothing_is_sent(client, container):
    customer = await onboard(client, currency="EUR")

    response = await client.post("/v1/subscriptions", headers=ADMIN,
                                 json={"customer_id": customer["customer_id"], "plan_id": "pro"})

    assert response.status_code == 422
    problem = response.json()
    assert problem["type"] == "/problems/currency-mismatch" and problem["errors"][0]["field"] == "plan_id"
    assert problem["detail"] == "plan pro bills in USD, the customer in EUR"
    with container.engine.connect() as conn:
        assert conn.execute(sa.select(audit_log.c.action).where(
            audit_log.c.customer_id == customer["customer_id"])).scalars().all() == ["customer.onboard"]
        assert conn.execute(sa.select(sa.func.count()).select_from(outbox).where(
            outbox.c.envelope["payload"]["customer_id"].astext == customer["customer_id"])).scalar() == 0


async def test_an_accepted_command_is_in_the_outbox_with_its_audit_row(client, worker, container):
    customer = await onboard(client)
    created = await subscribe(client, customer["customer_id"])

    with container.engine.connect() as conn:
        row = conn.execute(sa.select(outbox.c.topic, outbox.c.message_key, outbox.c.event_type)
                           .where(outbox.c.message_key == created["subscription_id"])).one()
        audited = conn.execute(sa.select(audit_log.c.details["command_id"].astext).where(
            audit_log.c.subscription_id == created["subscription_id"])).scalar_one()
        command_id = conn.execute(sa.select(outbox.c.event_id).where(
            outbox.c.message_key == created["subscription_id"])).scalar_one()

    assert tuple(row) == ("commands.v1", created["subscription_id"], "subscription.create")
    assert audited == str(command_id)

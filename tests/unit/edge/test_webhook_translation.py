"""Stripe events into our messages, against a fake unit of work: what each event type becomes, and that an
event is published once (its outbox rows and its mark commit together)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from services.ingest.service_layer.webhooks import WebhookResult, message_id, receive_stripe_event
from shared.contracts import topics
from shared.contracts.messages import parse_payload

from .fakes import FakeDatabase

pytestmark = pytest.mark.unit


def _event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"evt_{uuid.uuid4().hex[:12]}", "type": kind, "created": 1_773_144_000, "data": {"object": obj}}


def test_a_succeeded_payment_intent_becomes_payment_succeeded_keyed_by_its_subscription() -> None:
    db = FakeDatabase()
    event = _event("payment_intent.succeeded", {"id": "pi_1", "amount_received": 900, "currency": "usd",
                                                "metadata": {"subscription_id": "sub_1", "invoice_id": "in_1"}})

    assert receive_stripe_event(db, event) == WebhookResult("published", 1)

    [(topic, key, envelope)] = db.state.outbox
    payment = parse_payload(envelope)
    assert (topic, key, envelope.type, envelope.event_id) == (
        topics.PAYMENTS, "sub_1", "payment.succeeded", message_id(event["id"], "sub_1"))
    assert (payment.amount_minor, payment.currency, payment.provider_ref) == (900, "USD", "pi_1")  # type: ignore[attr-defined]


def test_a_failed_payment_says_whether_the_decline_is_hard() -> None:
    db = FakeDatabase()
    for code in ("stolen_card", "insufficient_funds"):
        receive_stripe_event(db, _event("payment_intent.payment_failed", {
            "id": f"pi_{code}", "amount": 900, "currency": "usd", "last_payment_error": {"decline_code": code},
            "metadata": {"subscription_id": "sub_1", "invoice_id": "in_1"}}))

    assert [parse_payload(e).hard_decline for _, _, e in db.state.outbox] == [True, False]  # type: ignore[attr-defined]


def test_a_repeated_event_is_a_duplicate_and_sends_nothing_more() -> None:
    db = FakeDatabase()
    event = _event("invoice.paid", {"id": "in_s", "payment_intent": "pi_2", "amount_paid": 500, "currency": "usd",
                                    "metadata": {"subscription_id": "sub_1", "invoice_id": "in_1"}})

    first, again = receive_stripe_event(db, event), receive_stripe_event(db, event)

    assert (first.status, again.status, len(db.state.outbox)) == ("published", "duplicate", 1)


def test_an_event_that_is_not_ours_is_recorded_and_ignored() -> None:
    db = FakeDatabase()
    event = _event("payment_intent.succeeded", {"id": "pi_3", "amount": 1, "currency": "usd", "metadata": {}})

    assert receive_stripe_event(db, event) == WebhookResult("ignored", 0)
    assert db.state.stripe_events == {event["id"]: True} and db.state.outbox == []


def test_a_deleted_stripe_customer_becomes_one_message_per_live_subscription() -> None:
    db = FakeDatabase()
    db.state.stripe_customers = {"cust_1": "cus_1", "cust_2": "cus_2"}
    db.state.subscriptions = {sid: {"customer_id": cid, "status": status} for sid, cid, status in (
        ("sub_a", "cust_1", "active"), ("sub_b", "cust_1", "paused"), ("sub_c", "cust_1", "cancelled"),
        ("sub_d", "cust_2", "active"))}

    result = receive_stripe_event(db, _event("customer.deleted", {"id": "cus_1"}))

    assert result == WebhookResult("published", 2)
    assert [(t, k, e.type) for t, k, e in db.state.outbox] == [
        (topics.PAYMENTS, "sub_a", "payment.customer_deleted"), (topics.PAYMENTS, "sub_b", "payment.customer_deleted")]


def test_an_attached_payment_method_updates_each_live_subscription_by_command() -> None:
    db = FakeDatabase()
    db.state.stripe_customers = {"cust_1": "cus_1"}
    db.state.subscriptions = {"sub_a": {"customer_id": "cust_1", "status": "trialing"}}

    receive_stripe_event(db, _event("payment_method.attached", {"id": "pm_new", "customer": "cus_1"}))

    [(topic, key, envelope)] = db.state.outbox
    assert (topic, key, envelope.type, envelope.payload["payment_method_id"]) == (
        topics.COMMANDS, "sub_a", "payment_method.update", "pm_new")


def test_a_payment_method_attached_before_any_subscription_becomes_the_customers_default_once() -> None:
    db = FakeDatabase()
    db.state.stripe_customers = {"cust_1": "cus_1", "cust_2": "cus_2"}
    db.state.customer_rows = {"cust_1": {"default_payment_method_id": None},
                              "cust_2": {"default_payment_method_id": "pm_kept"}}

    assert receive_stripe_event(db, _event("payment_method.attached", {"id": "pm_first", "customer": "cus_1"})) \
        == WebhookResult("ignored", 0)  # no subscription to update
    receive_stripe_event(db, _event("payment_method.attached", {"id": "pm_second", "customer": "cus_1"}))
    receive_stripe_event(db, _event("payment_method.attached", {"id": "pm_other", "customer": "cus_2"}))

    assert db.state.customer_rows["cust_1"]["default_payment_method_id"] == "pm_first"
    assert db.state.customer_rows["cust_2"]["default_payment_method_id"] == "pm_kept"

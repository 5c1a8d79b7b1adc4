"""Stripe events into our messages: translation, and exactly one publication per Stripe event.

- `payment_intent.succeeded`, `payment_intent.payment_failed`, `invoice.paid`, `invoice.payment_failed`
  -> `payment.succeeded` / `payment.failed` on payments.v1, keyed by the subscription id our payment
  executor put in the object's metadata (objects without it are not ours: acknowledged, not translated).
- `payment_method.attached` -> `payment_method.update` on commands.v1 for each live subscription of the
  customer; the customer's default payment method when it has none.
- `customer.deleted` -> `payment.customer_deleted` on payments.v1 for each live subscription of the
  customer (keyed by it): the worker decides what a subscription without a payment customer becomes.
- Other types are acknowledged and recorded only.

Dedupe on the Stripe event id (`stripe_webhook_events`); Stripe retries on any non-2xx. The event's row, its
messages (outbox rows) and the mark "published" commit in one transaction: a repeat of a published event is a
`duplicate` and writes nothing; identical deliveries racing it wait on its row lock and are duplicates too; a
failure rolls everything back, so Stripe's retry translates it again. Message ids derive from the Stripe
event id, so downstream dedupe holds even across a re-publication by the relay.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from services.ingest.service_layer.unit_of_work import UnitOfWorkFactory
from shared.contracts import topics
from shared.contracts.envelope import new_envelope
from shared.contracts.messages import (
    TYPE_OF,
    CustomerDeleted,
    Payload,
    PaymentFailed,
    PaymentSucceeded,
    UpdatePaymentMethod,
)
from shared.domain.payment_attempt import is_hard_decline

PRODUCER = "ingest.stripe-webhook"
_WEBHOOK_NAMESPACE = uuid.UUID("9d0c2a4e-5b61-4f0e-b7c3-1e2f3a4b5c6d")

LiveSubscriptions = Callable[[str], list[tuple[str, str]]]  # Stripe customer id -> [(subscription, customer)]


@dataclass(frozen=True)
class WebhookResult:
    status: Literal["published", "duplicate", "ignored"]
    messages: int = 0


def message_id(stripe_event_id: str, key: str) -> uuid.UUID:
    return uuid.uuid5(_WEBHOOK_NAMESPACE, f"{stripe_event_id}\x1f{key}")


def occurred_at(event: dict[str, Any]) -> datetime:
    return datetime.fromtimestamp(int(event.get("created") or time.time()), UTC)


def _decline(obj: dict[str, Any]) -> tuple[str | None, str | None]:
    error = obj.get("last_payment_error") or obj.get("last_finalization_error") or {}
    code = error.get("decline_code") or error.get("code")
    message = error.get("message")
    return code, message[:500] if isinstance(message, str) else None


def translate(event: dict[str, Any], live_subscriptions: LiveSubscriptions) -> list[tuple[str, str, Payload]]:
    """(topic, key, payload) for each message a Stripe event becomes (see the module docstring)."""
    kind = event["type"]
    obj: dict[str, Any] = (event.get("data") or {}).get("object") or {}
    metadata = obj.get("metadata") or {}
    at = occurred_at(event)
    subscription_id, invoice_id = metadata.get("subscription_id"), metadata.get("invoice_id")
    currency = str(obj.get("currency") or "").upper()
    if kind in ("payment_intent.succeeded", "invoice.paid") and subscription_id and invoice_id:
        amount = obj.get("amount_received") if kind.startswith("payment_intent") else obj.get("amount_paid")
        ref = obj.get("id") if kind.startswith("payment_intent") else (obj.get("payment_intent") or obj.get("id"))
        return [(topics.PAYMENTS, subscription_id, PaymentSucceeded(
            subscription_id=subscription_id, invoice_id=invoice_id, attempt_id=metadata.get("attempt_id"),
            provider_ref=ref, amount_minor=int(amount if amount is not None else obj.get("amount") or 0),
            currency=currency, source="webhook", paid_at=at))]
    if kind in ("payment_intent.payment_failed", "invoice.payment_failed") and subscription_id and invoice_id:
        code, message = _decline(obj)
        amount = obj.get("amount") if kind.startswith("payment_intent") else obj.get("amount_due")
        ref = obj.get("id") if kind.startswith("payment_intent") else (obj.get("payment_intent") or obj.get("id"))
        return [(topics.PAYMENTS, subscription_id, PaymentFailed(
            subscription_id=subscription_id, invoice_id=invoice_id, attempt_id=metadata.get("attempt_id"),
            provider_ref=ref, amount_minor=int(amount or 0), currency=currency, decline_code=code,
            hard_decline=is_hard_decline(code), message=message, source="webhook", failed_at=at))]
    if kind == "payment_method.attached" and obj.get("customer") and obj.get("id"):
        return [(topics.COMMANDS, sid, UpdatePaymentMethod(
            subscription_id=sid, customer_id=cid, payment_method_id=obj["id"]))
            for sid, cid in live_subscriptions(str(obj["customer"]))]
    if kind == "customer.deleted" and obj.get("id"):
        return [(topics.PAYMENTS, sid, CustomerDeleted(
            subscription_id=sid, customer_id=cid, stripe_customer_id=obj["id"], deleted_at=at))
            for sid, cid in live_subscriptions(str(obj["id"]))]
    return []


def receive_stripe_event(uow: UnitOfWorkFactory, event: dict[str, Any]) -> WebhookResult:
    """Translate a verified Stripe event once: its messages go to the outbox with the mark that it was."""
    event_id, kind = str(event["id"]), str(event["type"])
    with uow() as work:
        if work.claim_stripe_event(event_id, kind):
            return WebhookResult("duplicate")
        produced = translate(event, work.live_subscriptions_of_stripe_customer)
        obj = (event.get("data") or {}).get("object") or {}
        if kind == "payment_method.attached" and obj.get("customer") and obj.get("id"):
            # NOTE: a card added in Stripe before any subscription (a customer onboarded by its Stripe id, as
            # Metronome's billing_config gives it) becomes the customer's default: its subscriptions charge it.
            work.adopt_payment_method(str(obj["customer"]), str(obj["id"]))
        at = occurred_at(event)
        for topic, key, payload in produced:
            work.publish(topic, key, new_envelope(
                TYPE_OF[type(payload)], payload.model_dump(mode="json"), producer=PRODUCER, occurred_at=at,
                correlation_id=event_id, event_id=message_id(event_id, key)))
        work.mark_stripe_event_published(event_id)
    return WebhookResult("published" if produced else "ignored", len(produced))

"""`POST /v1/webhooks/stripe`: verified, deduplicated Stripe events translated into our messages.

- The signature is verified on the raw body with the stripe SDK against each configured secret
  (`settings.stripe_webhook_secret`, several separated by commas during a rotation); the signed timestamp
  must be within 5 minutes of now in either direction (the SDK checks only the past). Failure: 400, nothing
  produced.
- Dedupe on the Stripe event id (`stripe_webhook_events`); Stripe retries on any non-2xx, so a repeat of
  an already published event answers 200 `duplicate` and produces nothing. The event's row stays locked
  until its messages are acknowledged, so identical deliveries racing it wait and answer `duplicate` too.
  Messages carry an event_id derived from the Stripe event id, so a re-publication after a crash is
  deduplicated downstream as well.
- `payment_intent.succeeded`, `payment_intent.payment_failed`, `invoice.paid`, `invoice.payment_failed`
  -> `payment.succeeded` / `payment.failed` on payments.v1, keyed by the subscription id our payment
  executor put in the object's metadata (objects without it are not ours: acknowledged, not translated).
- `payment_method.attached` -> `payment_method.update` on commands.v1 for each live subscription of the
  customer.
- `customer.deleted` -> `payment.customer_deleted` on payments.v1 for each live subscription of the
  customer (keyed by it): the worker decides what a subscription without a payment customer becomes.
- Other types are acknowledged and recorded only.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
import stripe
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel
from sqlalchemy.dialects.postgresql import insert
from starlette.concurrency import run_in_threadpool

from services.ingest.container import Container, get_container
from services.ingest.problems import Problem, ProblemError
from shared.adapters.kafka.producer import OutgoingMessage
from shared.adapters.postgres.schema.billing import subscriptions
from shared.adapters.postgres.schema.core import customers
from shared.adapters.postgres.schema.edge import stripe_webhook_events
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
from shared.domain.dunning import DEFAULT_HARD_DECLINE_CODES

router = APIRouter(tags=["webhooks"])
TOLERANCE_SECONDS = 300
PRODUCER = "ingest.stripe-webhook"
_WEBHOOK_NAMESPACE = uuid.UUID("9d0c2a4e-5b61-4f0e-b7c3-1e2f3a4b5c6d")


class WebhookAck(BaseModel):
    received: bool = True
    status: str  # published | duplicate | ignored
    messages: int = 0


def _signed_at(header: str) -> int | None:
    for part in header.split(","):
        key, _, value = part.partition("=")
        if key.strip() == "t" and value.strip().isdigit():
            return int(value.strip())
    return None


def verify(payload: bytes, header: str | None, secrets: list[str], now: float) -> dict[str, Any]:
    """The event, if the signature matches one secret and the timestamp is within tolerance; else 400."""
    if not header:
        raise ProblemError(400, "Missing signature", "Stripe-Signature header required", slug="webhook-signature")
    signed_at = _signed_at(header)
    if signed_at is None or abs(now - signed_at) > TOLERANCE_SECONDS:
        raise ProblemError(400, "Stale or future signature", "timestamp outside the 5-minute tolerance",
                           slug="webhook-signature")
    text = payload.decode("utf-8", errors="replace")
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(  # type: ignore[no-untyped-call]
                text, header, secret, TOLERANCE_SECONDS)
        except stripe.SignatureVerificationError:
            continue
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise ProblemError(400, "Malformed event", slug="webhook-payload") from exc
        if not isinstance(event, dict) or not isinstance(event.get("id"), str) or "type" not in event:
            raise ProblemError(400, "Malformed event", slug="webhook-payload")
        return event
    raise ProblemError(400, "Invalid signature", "no configured secret matches", slug="webhook-signature")


def _message_id(stripe_event_id: str, key: str) -> uuid.UUID:
    return uuid.uuid5(_WEBHOOK_NAMESPACE, f"{stripe_event_id}\x1f{key}")


def _decline(obj: dict[str, Any]) -> tuple[str | None, str | None]:
    error = obj.get("last_payment_error") or obj.get("last_finalization_error") or {}
    code = error.get("decline_code") or error.get("code")
    message = error.get("message")
    return code, message[:500] if isinstance(message, str) else None


def translate(event: dict[str, Any], engine: sa.Engine) -> list[tuple[str, str, Payload]]:
    """(topic, key, payload) for each message a Stripe event becomes (pure except the customer lookup)."""
    kind = event["type"]
    obj: dict[str, Any] = (event.get("data") or {}).get("object") or {}
    metadata = obj.get("metadata") or {}
    at = datetime.fromtimestamp(int(event.get("created") or time.time()), UTC)
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
            hard_decline=code in DEFAULT_HARD_DECLINE_CODES, message=message, source="webhook", failed_at=at))]
    if kind == "payment_method.attached" and obj.get("customer") and obj.get("id"):
        return [(topics.COMMANDS, r.subscription_id, UpdatePaymentMethod(
            subscription_id=r.subscription_id, customer_id=r.customer_id, payment_method_id=obj["id"]))
            for r in _live_subscriptions(engine, str(obj["customer"]))]
    if kind == "customer.deleted" and obj.get("id"):
        return [(topics.PAYMENTS, r.subscription_id, CustomerDeleted(
            subscription_id=r.subscription_id, customer_id=r.customer_id, stripe_customer_id=obj["id"],
            deleted_at=at)) for r in _live_subscriptions(engine, str(obj["id"]))]
    return []


def _live_subscriptions(engine: sa.Engine, stripe_customer_id: str) -> list[sa.Row[tuple[str, str]]]:
    """(subscription_id, customer_id) of every subscription not cancelled of a Stripe customer."""
    with engine.connect() as conn:
        return list(conn.execute(
            sa.select(subscriptions.c.subscription_id, subscriptions.c.customer_id)
            .join(customers, customers.c.customer_id == subscriptions.c.customer_id)
            .where(customers.c.stripe_customer_id == stripe_customer_id, subscriptions.c.status != "cancelled")
            .order_by(subscriptions.c.subscription_id)).all())


@router.post("/v1/webhooks/stripe", response_model=WebhookAck, responses={
                 400: {"model": Problem, "description": "Missing, stale or invalid signature, or a malformed event"}},
             summary="Stripe webhook endpoint (signature-verified, deduplicated)")
async def stripe_webhook(request: Request, container: Container = Depends(get_container)) -> WebhookAck:
    payload = await request.body()
    secrets = [s.strip() for s in container.settings.stripe_webhook_secret.get_secret_value().split(",") if s.strip()]
    event = verify(payload, request.headers.get("stripe-signature"), secrets, time.time())
    event_id, kind = event["id"], str(event["type"])

    claim = await run_in_threadpool(_claim, container.engine, event_id, kind)
    if claim is None:
        return WebhookAck(status="duplicate")
    try:
        produced = await run_in_threadpool(translate, event, container.engine)
        at = datetime.fromtimestamp(int(event.get("created") or time.time()), UTC)
        messages = [OutgoingMessage.of(topic, key, new_envelope(
            TYPE_OF[type(payload_)], payload_.model_dump(mode="json"), producer=PRODUCER, occurred_at=at,
            correlation_id=event_id, event_id=_message_id(event_id, key))) for topic, key, payload_ in produced]
        await container.producer.send_async(messages)
        await run_in_threadpool(_mark_published, claim, event_id)
    finally:
        await run_in_threadpool(claim.close)  # rolls back unless marked: a failed delivery frees the claim
    return WebhookAck(status="published" if messages else "ignored", messages=len(messages))


def _claim(engine: sa.Engine, event_id: str, kind: str) -> sa.Connection | None:
    """A connection holding the event's row locked in an open transaction, or None if it was published.

    # NOTE: the row lock is held until the messages are acknowledged and the row is marked, so identical
    # deliveries arriving meanwhile wait on it and then answer `duplicate` (each used to publish too). A
    # failure rolls the claim back, so Stripe's retry publishes again.
    """
    conn = engine.connect()
    try:
        conn.begin()
        conn.execute(insert(stripe_webhook_events).values(stripe_event_id=event_id, event_type=kind)
                     .on_conflict_do_nothing())
        published = conn.execute(sa.select(stripe_webhook_events.c.published)
                                 .where(stripe_webhook_events.c.stripe_event_id == event_id)
                                 .with_for_update()).scalar_one()
    except BaseException:
        conn.close()
        raise
    if published:
        conn.close()
        return None
    return conn


def _mark_published(conn: sa.Connection, event_id: str) -> None:
    conn.execute(sa.update(stripe_webhook_events).where(stripe_webhook_events.c.stripe_event_id == event_id)
                 .values(published=True))
    conn.commit()

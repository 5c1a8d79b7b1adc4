"""`POST /v1/webhooks/stripe`: verified, deduplicated Stripe events translated into our messages.

- The signature is verified on the raw body with the stripe SDK against each configured secret
  (`settings.stripe_webhook_secret`, several separated by commas during a rotation); the signed timestamp
  must be within 5 minutes of now in either direction (the SDK checks only the past). Failure: 400, nothing
  produced.
- The verified event is handed to `services.ingest.service_layer.webhooks` (translation, dedupe on the Stripe
  event id, the messages written to the outbox in the transaction that marks the event published): a repeat
  answers 200 `duplicate` and produces nothing.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import stripe
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from services.ingest.container import Container, get_container
from services.ingest.problems import Problem, ProblemError
from services.ingest.service_layer.unit_of_work import sql_unit_of_work
from services.ingest.service_layer.webhooks import receive_stripe_event

router = APIRouter(tags=["webhooks"])
TOLERANCE_SECONDS = 300


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


@router.post("/v1/webhooks/stripe", response_model=WebhookAck, responses={
                 400: {"model": Problem, "description": "Missing, stale or invalid signature, or a malformed event"}},
             summary="Stripe webhook endpoint (signature-verified, deduplicated)")
async def stripe_webhook(request: Request, container: Container = Depends(get_container)) -> WebhookAck:
    payload = await request.body()
    secrets = [s.strip() for s in container.settings.stripe_webhook_secret.get_secret_value().split(",") if s.strip()]
    event = verify(payload, request.headers.get("stripe-signature"), secrets, time.time())
    result = await run_in_threadpool(receive_stripe_event, sql_unit_of_work(container.engine), event)
    return WebhookAck(status=result.status, messages=result.messages)

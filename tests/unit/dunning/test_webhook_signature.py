"""The webhook notifier's signature and retry behaviour, against an in-process ASGI receiver (no network)."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import UTC, datetime

import httpx
import orjson
import pytest

from shared.adapters.notify.port import Notification, NotificationDeliveryError, NotificationRejectedError
from shared.adapters.notify.webhook import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookNotifier,
    sign,
    verify_signature,
)

pytestmark = pytest.mark.unit

SECRET = "whsec_test"
NOTIFICATION = Notification(notification_id=uuid.UUID("8c0d8a39-6d1a-4f26-9a51-2f8a4d3a9b10"),
                            kind="payment_failed", customer_id="cus_1", recipient="ada@example.com",
                            subject="Payment of USD 20.00 failed", body="...",
                            occurred_at=datetime(2026, 3, 3, 9, 15, tzinfo=UTC), data={"day": 1})


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    expected = hmac.new(b"whsec_test", b"1767225600.{\"a\":1}", hashlib.sha256).hexdigest()
    assert sign(SECRET, 1767225600, b'{"a":1}') == f"v1={expected}"


def test_a_signature_verifies_only_with_the_same_secret_body_and_a_fresh_timestamp() -> None:
    signature = sign(SECRET, 1000, b"body")
    assert verify_signature(SECRET, timestamp="1000", body=b"body", signature=signature, now=1100)
    assert not verify_signature("other", timestamp="1000", body=b"body", signature=signature, now=1100)
    assert not verify_signature(SECRET, timestamp="1000", body=b"bodY", signature=signature, now=1100)
    assert not verify_signature(SECRET, timestamp="1000", body=b"body", signature=signature, now=1000 + 301)
    assert not verify_signature(SECRET, timestamp="not-a-number", body=b"body", signature=signature, now=1000)


class Receiver:
    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(self.statuses[min(len(self.requests), len(self.statuses)) - 1])


def notifier(receiver: Receiver, sleeps: list[float], max_attempts: int = 4) -> WebhookNotifier:
    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    client = httpx.AsyncClient(transport=httpx.MockTransport(receiver))
    return WebhookNotifier("https://example.test/hooks", SECRET, client=client, max_attempts=max_attempts,
                           sleep=sleep, wall_clock=lambda: 1767225600.5)


async def test_the_webhook_carries_event_id_timestamp_and_a_verifiable_signature() -> None:
    receiver = Receiver([204])
    await notifier(receiver, []).send(NOTIFICATION)

    [request] = receiver.requests
    body = request.content
    assert request.headers[EVENT_ID_HEADER] == str(NOTIFICATION.notification_id)
    assert request.headers[TIMESTAMP_HEADER] == "1767225600"
    assert verify_signature(SECRET, timestamp=request.headers[TIMESTAMP_HEADER], body=body,
                            signature=request.headers[SIGNATURE_HEADER], now=1767225600)
    assert orjson.loads(body) == {"id": str(NOTIFICATION.notification_id), "type": "notification.payment_failed",
                                  "customer_id": "cus_1", "recipient": "ada@example.com",
                                  "subject": "Payment of USD 20.00 failed", "body": "...",
                                  "occurred_at": "2026-03-03T09:15:00+00:00", "data": {"day": 1}}


async def test_server_errors_are_retried_with_growing_backoff_and_the_same_event_id() -> None:
    receiver = Receiver([503, 500, 204])
    sleeps: list[float] = []
    await notifier(receiver, sleeps).send(NOTIFICATION)

    assert len(receiver.requests) == 3
    assert {r.headers[EVENT_ID_HEADER] for r in receiver.requests} == {str(NOTIFICATION.notification_id)}
    assert len(sleeps) == 2
    assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0


async def test_a_receiver_that_keeps_failing_makes_delivery_retryable_later() -> None:
    receiver = Receiver([502])
    with pytest.raises(NotificationDeliveryError):
        await notifier(receiver, [], max_attempts=3).send(NOTIFICATION)
    assert len(receiver.requests) == 3


async def test_a_client_error_is_not_retried() -> None:
    receiver = Receiver([400])
    with pytest.raises(NotificationRejectedError):
        await notifier(receiver, []).send(NOTIFICATION)
    assert len(receiver.requests) == 1

"""Identical Stripe webhooks delivered at once: one is published, the others say `duplicate` (issue 12, 10b)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
import uuid

import orjson
import pytest

pytestmark = pytest.mark.integration


def _signed(payload: bytes, secret: str, at: int) -> dict[str, str]:
    signature = hmac.new(secret.encode(), f"{at}.".encode() + payload, hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={at},v1={signature}", "content-type": "application/json"}


async def test_three_identical_concurrent_webhooks_publish_once_and_the_others_say_duplicate(client, container):
    secret = container.settings.stripe_webhook_secret.get_secret_value()
    payload = orjson.dumps({"id": f"evt_{uuid.uuid4().hex[:16]}", "type": "payment_intent.succeeded",
                            "created": int(time.time()), "data": {"object": {
                                "id": "pi_1", "amount": 900, "amount_received": 900, "currency": "usd",
                                "metadata": {"subscription_id": f"sub_{uuid.uuid4().hex[:8]}",
                                             "invoice_id": "in_1", "attempt_id": "att_1"}}}})
    headers = _signed(payload, secret, int(time.time()))

    responses = await asyncio.gather(*(client.post("/v1/webhooks/stripe", content=payload, headers=headers)
                                       for _ in range(3)))

    assert [r.status_code for r in responses] == [200, 200, 200]
    assert sorted(r.json()["status"] for r in responses) == ["duplicate", "duplicate", "published"]

"""Outgoing webhook notifier: a signed JSON POST, retried with exponential backoff.

Wire contract (for receivers):
- body: the notification as JSON (``Notification.as_json``);
- ``Billing-Event-Id``: the notification id; the same notification always carries the same id, so a
  receiver that remembers ids it has processed drops redeliveries;
- ``Billing-Timestamp``: Unix seconds when this attempt was signed;
- ``Billing-Signature``: ``v1=`` + hex HMAC-SHA256 of ``"{timestamp}.{body}"`` with the shared secret.
  Receivers recompute it (``verify_signature``), compare in constant time and refuse timestamps older
  than a tolerance, which stops replays of a captured request.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import time
from collections.abc import Awaitable, Callable
from typing import Final

import httpx
import orjson

from shared.adapters.notify.port import Notification, NotificationDeliveryError, NotificationRejectedError

SIGNATURE_HEADER: Final = "Billing-Signature"
TIMESTAMP_HEADER: Final = "Billing-Timestamp"
EVENT_ID_HEADER: Final = "Billing-Event-Id"
SIGNATURE_SCHEME: Final = "v1"
_RETRYABLE_STATUS: Final = frozenset({408, 409, 425, 429})


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Billing-Signature`` header value for ``body`` signed at ``timestamp``."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_SCHEME}={digest}"


def verify_signature(secret: str, *, timestamp: str, body: bytes, signature: str, now: float,
                     tolerance_s: float = 300.0) -> bool:
    """Whether a received request was signed with ``secret`` within ``tolerance_s`` of ``now``."""
    try:
        signed_at = int(timestamp)
    except ValueError:
        return False
    if abs(now - signed_at) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, signed_at, body), signature)


class WebhookNotifier:
    channel = "webhook"

    def __init__(self, url: str, secret: str, *, client: httpx.AsyncClient | None = None,
                 max_attempts: int = 4, base_delay_s: float = 0.5, max_delay_s: float = 8.0,
                 timeout_s: float = 10.0, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 wall_clock: Callable[[], float] = time.time) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._url = url
        self._secret = secret
        self._client = client or httpx.AsyncClient(timeout=timeout_s)
        self._owns_client = client is None
        self._max_attempts = max_attempts
        self._base_delay_s = base_delay_s
        self._max_delay_s = max_delay_s
        self._sleep = sleep
        self._wall_clock = wall_clock

    async def send(self, notification: Notification) -> None:
        body = orjson.dumps(notification.as_json())
        last_error = "no attempt made"
        for attempt in range(1, self._max_attempts + 1):
            timestamp = int(self._wall_clock())
            headers = {
                "Content-Type": "application/json",
                EVENT_ID_HEADER: str(notification.notification_id),
                TIMESTAMP_HEADER: str(timestamp),
                SIGNATURE_HEADER: sign(self._secret, timestamp, body),
            }
            try:
                response = await self._client.post(self._url, content=body, headers=headers)
            except httpx.TransportError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            else:
                if response.is_success:
                    return
                last_error = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code not in _RETRYABLE_STATUS:
                    raise NotificationRejectedError(f"webhook receiver refused the notification: {last_error}")
            if attempt < self._max_attempts:
                await self._sleep(self._backoff(attempt))
        raise NotificationDeliveryError(f"webhook not acknowledged after {self._max_attempts} attempts: "
                                        f"{last_error}")

    def _backoff(self, attempt: int) -> float:
        """Exponential with full jitter, so many senders retrying after one outage spread out."""
        ceiling = min(self._max_delay_s, self._base_delay_s * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

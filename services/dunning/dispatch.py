"""Delivers the notifications dunning decided, after their transaction committed.

A notice action writes a pending ``dunning_notifications`` row in the same transaction as the action
(so it is decided once); delivery happens here, outside any transaction, because an email or a webhook
cannot be rolled back. Delivery is at-least-once with a stable id (see ``shared.adapters.notify.port``).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from shared.adapters.notify.port import NotificationDeliveryError, NotificationRejectedError, Notifier
from shared.observability import kv

from .repository import PostgresNotificationQueue

log = logging.getLogger("billing.dunning.notify")


class NotificationDispatcher:
    def __init__(self, queue: PostgresNotificationQueue, notifier: Notifier, *, batch_size: int = 50,
                 lease: timedelta = timedelta(minutes=2), max_attempts: int = 8,
                 first_retry_delay: timedelta = timedelta(seconds=5)) -> None:
        self._queue = queue
        self._notifier = notifier
        self._batch_size = batch_size
        self._lease = lease
        self._max_attempts = max_attempts
        self._first_retry_delay = first_retry_delay

    async def deliver_due(self) -> int:
        """Send every pending notification whose turn has come; returns how many were delivered."""
        claimed = await asyncio.to_thread(self._queue.claim_due, self._batch_size, self._lease)
        delivered = 0
        for item in claimed:
            notification = item.notification
            fields = kv(notification_id=str(notification.notification_id), kind=notification.kind,
                        customer_id=notification.customer_id, attempt=item.attempts,
                        channel=self._notifier.channel)
            try:
                await self._notifier.send(notification)
            except NotificationRejectedError as exc:
                log.error("notification rejected", extra={**fields, "error": str(exc)})
                await asyncio.to_thread(self._queue.mark_failed, notification.notification_id, str(exc))
            except NotificationDeliveryError as exc:
                if item.attempts >= self._max_attempts:
                    log.error("notification undeliverable", extra={**fields, "error": str(exc)})
                    await asyncio.to_thread(self._queue.mark_failed, notification.notification_id, str(exc))
                else:
                    delay = self._first_retry_delay * 2 ** (item.attempts - 1)
                    log.warning("notification delivery failed; will retry", extra={**fields, "error": str(exc)})
                    await asyncio.to_thread(self._queue.mark_retry, notification.notification_id, str(exc), delay)
            else:
                await asyncio.to_thread(self._queue.mark_sent, notification.notification_id)
                log.info("notification delivered", extra=fields)
                delivered += 1
        return delivered

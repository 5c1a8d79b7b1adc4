"""A Notifier that writes each notification to the structured log: for development and the demo."""

from __future__ import annotations

import logging

from shared.adapters.notify.port import Notification
from shared.observability import kv

log = logging.getLogger("billing.notify")


class LogNotifier:
    channel = "log"

    async def send(self, notification: Notification) -> None:
        log.info("notification", extra=kv(notification_id=str(notification.notification_id),
                                           kind=notification.kind, customer_id=notification.customer_id,
                                           recipient=notification.recipient, subject=notification.subject))

    async def aclose(self) -> None:
        return None

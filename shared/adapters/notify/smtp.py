"""Email notifier over SMTP (aiosmtplib).

The email's Message-ID derives from the notification id, and the id is repeated in the
``X-Billing-Event-Id`` header, so a resend after a crash is recognisable as the same message.
"""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import format_datetime

import aiosmtplib

from shared.adapters.notify.port import Notification, NotificationDeliveryError, NotificationRejectedError


class SmtpNotifier:
    channel = "email"

    def __init__(self, host: str, port: int, sender: str, *, username: str | None = None,
                 password: str | None = None, start_tls: bool = False, timeout_s: float = 30.0) -> None:
        self._host = host
        self._port = port
        self._sender = sender
        self._username = username
        self._password = password
        self._start_tls = start_tls
        self._timeout_s = timeout_s

    def compose(self, notification: Notification) -> EmailMessage:
        if not notification.recipient:
            raise NotificationRejectedError(
                f"notification {notification.notification_id} has no recipient email address")
        message = EmailMessage()
        message["From"] = self._sender
        message["To"] = notification.recipient
        message["Subject"] = notification.subject
        message["Date"] = format_datetime(notification.occurred_at)
        message["Message-ID"] = f"<{notification.notification_id}@{self._sender.rpartition('@')[2] or 'billing'}>"
        message["X-Billing-Event-Id"] = str(notification.notification_id)
        message["X-Billing-Notification"] = notification.kind
        message.set_content(notification.body)
        return message

    async def send(self, notification: Notification) -> None:
        message = self.compose(notification)
        try:
            await aiosmtplib.send(message, hostname=self._host, port=self._port, username=self._username,
                                  password=self._password, start_tls=self._start_tls, timeout=self._timeout_s)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise NotificationRejectedError(f"recipient refused: {exc}") from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise NotificationDeliveryError(f"SMTP delivery failed: {type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        return None

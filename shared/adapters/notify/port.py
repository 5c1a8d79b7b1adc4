"""The Notifier port: tell a customer something, once, through one channel (log, webhook, email).

Contract:
- ``send`` delivers one ``Notification`` or raises. ``NotificationDeliveryError`` means "try again later"
  (network, 5xx, SMTP busy); ``NotificationRejectedError`` means the same notification can never be
  delivered (no recipient, 4xx from the receiver) and must not be retried.
- Delivery is at-least-once: a caller that crashes after ``send`` succeeded and before it recorded the
  success sends again. Every notification carries a stable ``notification_id`` (the webhook's event id
  header, the email's Message-ID) so receivers can drop the second copy.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol

from shared.errors import InfrastructureError, TerminalError


@dataclass(frozen=True, slots=True)
class Notification:
    notification_id: uuid.UUID
    kind: str
    customer_id: str
    recipient: str | None
    subject: str
    body: str
    occurred_at: datetime
    data: Mapping[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The wire form of the webhook body: stable field names, aware RFC 3339 instant."""
        return {
            "id": str(self.notification_id),
            "type": f"notification.{self.kind}",
            "customer_id": self.customer_id,
            "recipient": self.recipient,
            "subject": self.subject,
            "body": self.body,
            "occurred_at": self.occurred_at.isoformat(),
            "data": dict(self.data),
        }


class NotificationDeliveryError(InfrastructureError):
    """The channel did not take the notification now; the same notification may be sent again later."""


class NotificationRejectedError(TerminalError):
    """The notification can never be delivered as it is (no recipient, refused by the receiver)."""

    retryable: ClassVar[bool] = False


class Notifier(Protocol):
    channel: str

    async def send(self, notification: Notification) -> None:
        """Deliver ``notification`` or raise ``NotificationDeliveryError`` / ``NotificationRejectedError``."""
        ...

    async def aclose(self) -> None:
        """Release connections (HTTP client pools); the notifier is not used afterwards."""
        ...

"""Notifications: the Notifier port and its adapters (log, signed webhook, SMTP email), plus the read
side of what was sent (``history.list_notifications``)."""

from shared.adapters.notify.port import (
    Notification,
    NotificationDeliveryError,
    NotificationRejectedError,
    Notifier,
)

__all__ = ["Notification", "NotificationDeliveryError", "NotificationRejectedError", "Notifier"]

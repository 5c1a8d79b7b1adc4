"""Build the configured Notifier from settings (called by composition roots only)."""

from __future__ import annotations

from shared.adapters.notify.log import LogNotifier
from shared.adapters.notify.port import Notifier
from shared.adapters.notify.smtp import SmtpNotifier
from shared.adapters.notify.webhook import WebhookNotifier
from shared.config import Settings


def build_notifier(settings: Settings) -> Notifier:
    if settings.notifier == "webhook":
        if not settings.notify_webhook_url:
            raise ValueError("BILLING_NOTIFIER=webhook needs BILLING_NOTIFY_WEBHOOK_URL")
        return WebhookNotifier(settings.notify_webhook_url, settings.notify_webhook_secret.get_secret_value())
    if settings.notifier == "smtp":
        return SmtpNotifier(settings.smtp_host, settings.smtp_port, settings.smtp_sender)
    return LogNotifier()

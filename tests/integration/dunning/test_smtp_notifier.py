"""The SMTP notifier against a local SMTP sink (aiosmtpd)."""

from __future__ import annotations

import email
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import Message
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from shared.adapters.notify.port import Notification, NotificationDeliveryError, NotificationRejectedError
from shared.adapters.notify.smtp import SmtpNotifier

pytestmark = pytest.mark.integration


class Sink:
    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos),
                              email.message_from_bytes(envelope.content)))
        return "250 Message accepted for delivery"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def sink() -> Iterator[tuple[Sink, int]]:
    handler = Sink()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


def notification(recipient: str | None = "ada@example.com") -> Notification:
    return Notification(notification_id=uuid.uuid4(), kind="subscription_cancelled", customer_id="cus_1",
                        recipient=recipient, subject="Your subscription has been cancelled",
                        body="We were unable to collect EUR 49.00.", occurred_at=datetime(2026, 4, 15, tzinfo=UTC))


async def test_an_email_reaches_the_smtp_sink_with_the_notification_id_as_message_id(sink: tuple[Sink, int]) -> None:
    handler, port = sink
    sent = notification()

    await SmtpNotifier("127.0.0.1", port, "billing@example.org").send(sent)

    [(mail_from, rcpt_tos, message)] = handler.received
    assert mail_from == "billing@example.org"
    assert rcpt_tos == ["ada@example.com"]
    assert message["Subject"] == "Your subscription has been cancelled"
    assert message["Message-ID"] == f"<{sent.notification_id}@example.org>"
    assert message["X-Billing-Event-Id"] == str(sent.notification_id)
    assert message.get_payload(decode=True).decode().strip() == "We were unable to collect EUR 49.00."


async def test_a_notification_without_recipient_is_rejected_not_retried(sink: tuple[Sink, int]) -> None:
    handler, port = sink
    with pytest.raises(NotificationRejectedError):
        await SmtpNotifier("127.0.0.1", port, "billing@example.org").send(notification(recipient=None))
    assert handler.received == []


async def test_an_unreachable_smtp_server_is_a_retryable_delivery_error() -> None:
    with pytest.raises(NotificationDeliveryError):
        await SmtpNotifier("127.0.0.1", free_port(), "billing@example.org", timeout_s=2).send(notification())

"""Quota alerts at the edge: which of the alerts the domain calls for are new, their outbox events, and the
notification each one sends (its wording).

The policy (thresholds, limit reached, trial used up, per-user limit, "on track to hit the monthly limit")
is the domain's ``shared.domain.quota.alerts_due``. Alerts are evaluated after every batch from the state it
leaves (level-triggered), written in the same statement as the consumption and kept exactly once per (org,
period, kind, threshold, user) by a unique constraint: a restart, a retry or a second edge process cannot
send one twice. After commit each new alert is also handed to the Notifier port (at-least-once, keyed by the
alert's event id); the durable copy is the outbox event on ``billing-events.v1``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Collection, Iterable
from datetime import datetime

from shared.adapters.notify.port import Notification, Notifier
from shared.adapters.postgres.quota_store import AlertKey, NewAlert, OrgSnapshot
from shared.contracts.envelope import new_envelope
from shared.contracts.messages import QuotaAlert
from shared.domain.ids import uuid5_of
from shared.domain.quota import OrgQuotaState, alerts_due
from shared.observability import kv

_log = logging.getLogger("services.ingest.quota")

PRODUCER = "ingest"
_EVENT_NAMESPACE = uuid.UUID("6f1c5c4e-8a7b-4d0e-9a53-3a2f61e0c7d1")
_event_uuid = uuid5_of(_EVENT_NAMESPACE)


def event_id(*parts: object) -> uuid.UUID:
    """The deterministic event id of a quota event (a retry of the same batch writes the same id)."""
    return _event_uuid("|".join(str(part) for part in parts))


def new_alerts(snapshot: OrgSnapshot, state: OrgQuotaState, at: datetime, users: Iterable[str], *,
               org_used: int | None = None) -> list[NewAlert]:
    """The alerts the state left by a batch calls for and that were not sent yet, with their events
    (``org_used``: the month's org count when kept apart from ``state``, see ``alerts_due``)."""
    org = snapshot.org
    alerts = []
    for due in alerts_due(state, at, users, org.alert_thresholds, org_used=org_used):
        key = AlertKey(due.kind.value, due.period_start, due.threshold_percent, due.user_id)
        if key in snapshot.alerts_sent:
            continue
        alert_id = event_id("alert", org.org_id, key.period_start.isoformat(), key.kind, key.threshold_percent,
                            key.user_id)
        payload = QuotaAlert(org_id=org.org_id, user_id=key.user_id or None, period_start=key.period_start,
                             threshold_percent=key.threshold_percent or None, used=due.used,
                             allotment=due.allotment, reason=due.reason)
        envelope = new_envelope(key.kind, payload.model_dump(mode="json"), producer=PRODUCER, occurred_at=at,
                                event_id=alert_id)
        alerts.append(NewAlert(key, due.used, due.allotment, due.reason, alert_id, envelope.model_dump_json()))
    return alerts


def notification_of(alert: NewAlert, org_id: str, at: datetime) -> Notification:
    """What the org is told about one alert."""
    who = f" (user {alert.key.user_id})" if alert.key.user_id else ""
    return Notification(
        notification_id=alert.event_id, kind=alert.key.kind.replace(".", "_"), customer_id=org_id,
        recipient=None, subject=f"Report quota of {org_id}{who}: {alert.reason}",
        body=f"{alert.used} of {alert.allotment} reports used: {alert.reason}.", occurred_at=at,
        data={"org_id": org_id, "user_id": alert.key.user_id or None, "kind": alert.key.kind,
              "threshold_percent": alert.key.threshold_percent or None, "used": alert.used,
              "allotment": alert.allotment, "period_start": alert.key.period_start.isoformat()})


class AlertNotifications:
    """Sends the notifications of newly committed alerts in the background (never delays an answer)."""

    def __init__(self, notifier: Notifier | None) -> None:
        self._notifier = notifier
        self._background: set[asyncio.Task[None]] = set()

    def send(self, alerts: Iterable[NewAlert], inserted: Collection[object], org_id: str, at: datetime) -> None:
        """Notify the alerts of ``alerts`` whose event id is in ``inserted`` (new: committed just now)."""
        if self._notifier is None:
            return
        for alert in alerts:
            if alert.event_id in inserted:
                task = asyncio.ensure_future(self._send(self._notifier, notification_of(alert, org_id, at)))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    @staticmethod
    async def _send(notifier: Notifier, notification: Notification) -> None:
        try:
            await notifier.send(notification)
        except Exception:
            # NOTE: the outbox event on billing-events.v1 is the durable record; the notification consumer
            # of that topic retries delivery, so a failed direct send is logged, not retried here.
            _log.warning("quota alert notification failed", exc_info=True,
                         extra=kv(notification_id=str(notification.notification_id),
                                  customer_id=notification.customer_id))

    async def aclose(self) -> None:
        for task in list(self._background):
            task.cancel()

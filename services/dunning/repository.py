"""PostgreSQL adapters of the dunning service: the case store and the notification delivery queue.

Driver errors are translated here (``shared.adapters.postgres.errors.translate``): those a retry can cure (an
outage: connection lost, serialisation failure) into ``DatabaseUnavailableError``, so the consumer retries the
same event; a refusal of the data into ``DataRejectedError``, which the consumer dead-letters.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from shared.adapters.notify.port import Notification
from shared.adapters.postgres.errors import translate
from shared.adapters.postgres.outbox import add_to_outbox
from shared.adapters.postgres.schema.core import customers
from shared.adapters.postgres.schema.dunning import (
    dunning_actions,
    dunning_cases,
    dunning_inbox,
    dunning_notifications,
)
from shared.domain.dunning import CompletedAction, DunningCase, DunningPolicy, DunningStatus, PaymentFailure

from .ports import ActionKind, CaseRecord, NoticeRecord, OutgoingCommand
from .reconciliation import PaymentAttemptReader


@contextmanager
def _translated_errors() -> Iterator[None]:
    try:
        yield
    except sa.exc.DBAPIError as exc:
        # NOTE: by SQLSTATE, not by the driver's class: an outage becomes DatabaseUnavailableError (retried),
        # a refusal of the data (value too long, index row too large: also an OperationalError to psycopg)
        # DataRejectedError (dead-lettered), never retried forever.
        raise translate(exc) from exc


class PostgresDunningStore:
    """``DunningStore`` on PostgreSQL: one ``engine.begin()`` transaction per ``transaction()``."""

    def __init__(self, engine: sa.Engine, policy: DunningPolicy, attempts: PaymentAttemptReader) -> None:
        self._engine = engine
        self._policy = policy
        self._attempts = attempts

    @contextmanager
    def transaction(self) -> Iterator[PostgresDunningTransaction]:
        with _translated_errors(), self._engine.begin() as conn:
            yield PostgresDunningTransaction(conn, self._policy, self._attempts)


class PostgresDunningTransaction:
    def __init__(self, conn: sa.Connection, policy: DunningPolicy, attempts: PaymentAttemptReader) -> None:
        self._conn = conn
        self._policy = policy
        self._attempts = attempts

    def claim_event(self, event_id: uuid.UUID, event_type: str, source: str | None) -> bool:
        inserted = self._conn.execute(
            insert(dunning_inbox).values(event_id=event_id, event_type=event_type, source=source)
            .on_conflict_do_nothing(index_elements=[dunning_inbox.c.event_id])
            .returning(dunning_inbox.c.event_id)).first()
        return inserted is not None

    def case_for_invoice(self, invoice_id: str) -> CaseRecord | None:
        rows = self._locked_cases(dunning_cases.c.invoice_id == invoice_id)
        return rows[0] if rows else None

    def open_cases_of_subscription(self, subscription_id: str) -> list[CaseRecord]:
        return self._locked_cases(sa.and_(dunning_cases.c.subscription_id == subscription_id,
                                          dunning_cases.c.status == DunningStatus.OPEN.value))

    def lock_due_cases(self, now: datetime, limit: int,
                       after: tuple[datetime, str] | None = None) -> list[CaseRecord]:
        c = dunning_cases
        where = sa.and_(c.c.status == DunningStatus.OPEN.value, c.c.next_wake_at <= now)
        if after is not None:
            where = sa.and_(where, sa.tuple_(c.c.next_wake_at, c.c.case_id)
                            > sa.tuple_(sa.literal(after[0], sa.DateTime(timezone=True)), sa.literal(after[1])))
        return self._locked_cases(where, order_by=(c.c.next_wake_at, c.c.case_id), limit=limit, skip_locked=True)

    def failure_instant(self, invoice_id: str, attempt_no: int | None) -> datetime | None:
        if attempt_no is None:
            return None
        return self._attempts.requested_at(self._conn, invoice_id, attempt_no)

    def attempt_reason(self, invoice_id: str, attempt_no: int) -> str | None:
        return self._attempts.reason_of(self._conn, invoice_id, attempt_no)

    def insert_case(self, record: CaseRecord) -> None:
        case = record.case
        self._conn.execute(dunning_cases.insert().values(
            case_id=case.case_id, invoice_id=case.invoice_id, subscription_id=case.subscription_id,
            customer_id=record.customer_id, amount_minor=record.amount_minor, currency=record.currency,
            opened_at=case.opened_at, **_mutable_columns(record, None)))

    def update_case(self, record: CaseRecord, next_wake_at: datetime | None) -> None:
        self._conn.execute(dunning_cases.update()
                           .where(dunning_cases.c.case_id == record.case.case_id)
                           .values(**_mutable_columns(record, next_wake_at), updated_at=sa.func.now()))

    def record_action(self, case_id: str, action_key: str, kind: ActionKind, at: datetime, *,
                      command: OutgoingCommand | None = None, notice: NoticeRecord | None = None) -> bool:
        inserted = self._conn.execute(
            insert(dunning_actions).values(
                case_id=case_id, action_key=action_key, kind=kind, carried_out_at=at,
                command_event_id=command.envelope.event_id if command else None)
            .on_conflict_do_nothing(index_elements=[dunning_actions.c.case_id, dunning_actions.c.action_key])
            .returning(dunning_actions.c.id)).first()
        if inserted is None:
            return False
        if command is not None:
            add_to_outbox(self._conn, [(command.topic, command.key, command.envelope)])
        if notice is not None:
            self._conn.execute(dunning_notifications.insert().values(
                notification_id=notice.notification_id, case_id=notice.case_id, action_key=notice.action_key,
                customer_id=notice.customer_id, subscription_id=notice.subscription_id,
                invoice_id=notice.invoice_id, kind=notice.kind, channel=notice.channel,
                recipient=notice.recipient, subject=notice.subject, body=notice.body, data=dict(notice.data),
                decided_at=notice.decided_at))
        return True

    def customer_email(self, customer_id: str) -> str | None:
        email: str | None = self._conn.execute(
            sa.select(customers.c.email).where(customers.c.customer_id == customer_id)).scalar_one_or_none()
        return email

    def unsettled_payment_attempts(self, invoice_id: str) -> int:
        return self._attempts.count_unsettled(self._conn, invoice_id)

    # --- loading -----------------------------------------------------------------------------------------

    def _locked_cases(self, where: sa.ColumnElement[bool], *, order_by: tuple[Any, ...] | None = None,
                      limit: int | None = None, skip_locked: bool = False) -> list[CaseRecord]:
        query = sa.select(dunning_cases).where(where).with_for_update(skip_locked=skip_locked)
        if order_by is not None:
            query = query.order_by(*order_by)
        if limit is not None:
            query = query.limit(limit)
        rows = self._conn.execute(query).all()
        if not rows:
            return []
        done: dict[str, list[CompletedAction]] = {row.case_id: [] for row in rows}
        retried: dict[str, datetime] = {}
        a = dunning_actions
        for action in self._conn.execute(
                sa.select(a.c.case_id, a.c.action_key, a.c.carried_out_at, a.c.kind, a.c.created_at)
                .where(a.c.case_id.in_(list(done))).order_by(a.c.id)):
            done[action.case_id].append(CompletedAction(action.action_key, action.carried_out_at))
            if action.kind == "retry":
                retried[action.case_id] = action.created_at
        return [self._record(row, done[row.case_id], retried.get(row.case_id)) for row in rows]

    def _record(self, row: sa.Row[Any], completed: Sequence[CompletedAction],
                last_retry_decided_at: datetime | None) -> CaseRecord:
        failures = tuple(PaymentFailure(at=datetime.fromisoformat(f["at"]), hard=f["hard"],
                                        decline_code=f["decline_code"]) for f in row.failures)
        attempt_nos = tuple(f.get("attempt_no") for f in row.failures)
        case = DunningCase(
            case_id=row.case_id, invoice_id=row.invoice_id, subscription_id=row.subscription_id,
            opened_at=row.opened_at, policy=self._policy, status=DunningStatus(row.status), failures=failures,
            payment_method_updates=tuple(datetime.fromisoformat(at) for at in row.payment_method_updates),
            completed=tuple(completed), retries_suspended=row.retries_suspended, closed_at=row.closed_at)
        return CaseRecord(case=case, customer_id=row.customer_id, amount_minor=row.amount_minor,
                          currency=row.currency,
                          attempt_numbers=frozenset(n for n in attempt_nos if n is not None),
                          failure_attempt_nos=attempt_nos, closed_reason=row.closed_reason,
                          next_wake_at=row.next_wake_at, last_retry_decided_at=last_retry_decided_at)


def _mutable_columns(record: CaseRecord, next_wake_at: datetime | None) -> dict[str, Any]:
    case = record.case
    attempt_nos = record.failure_attempt_nos or (None,) * len(case.failures)
    return {
        "status": case.status.value,
        "retries_suspended": case.retries_suspended,
        "failures": [{"at": f.at.isoformat(), "hard": f.hard, "decline_code": f.decline_code, "attempt_no": n}
                     for f, n in zip(case.failures, attempt_nos, strict=True)],
        "payment_method_updates": [at.isoformat() for at in case.payment_method_updates],
        "next_wake_at": next_wake_at if case.status is DunningStatus.OPEN else None,
        "closed_at": case.closed_at,
        "closed_reason": record.closed_reason,
    }


# --- notification delivery queue ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClaimedNotification:
    notification: Notification
    attempts: int
    """Delivery attempts including the one just claimed."""


class PostgresNotificationQueue:
    """Pending notifications, claimed with a lease so two dispatchers never send the same one at once.

    A dispatcher that dies after sending and before ``mark_sent`` leaves the row pending; when the lease
    expires it is sent again with the same id (receivers dedupe on it).
    """

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    def claim_due(self, limit: int, lease: timedelta) -> list[ClaimedNotification]:
        n = dunning_notifications
        due = (sa.select(n.c.notification_id)
               .where(n.c.status == "pending", n.c.next_attempt_at <= sa.func.now())
               .order_by(n.c.seq).limit(limit).with_for_update(skip_locked=True).scalar_subquery())
        with _translated_errors(), self._engine.begin() as conn:
            rows = conn.execute(
                n.update().where(n.c.notification_id.in_(due))
                .values(next_attempt_at=sa.func.now() + lease, attempts=n.c.attempts + 1)
                .returning(n)).all()
        rows = sorted(rows, key=lambda row: row.seq)
        return [ClaimedNotification(
            Notification(notification_id=row.notification_id, kind=row.kind, customer_id=row.customer_id,
                         recipient=row.recipient, subject=row.subject, body=row.body,
                         occurred_at=row.decided_at, data=dict(row.data)),
            row.attempts) for row in rows]

    def mark_sent(self, notification_id: uuid.UUID) -> None:
        self._set(notification_id, status="sent", delivered_at=sa.func.now(), last_error=None)

    def mark_retry(self, notification_id: uuid.UUID, error: str, delay: timedelta) -> None:
        self._set(notification_id, next_attempt_at=sa.func.now() + delay, last_error=error[:2000])

    def mark_failed(self, notification_id: uuid.UUID, error: str) -> None:
        self._set(notification_id, status="failed", last_error=error[:2000])

    def _set(self, notification_id: uuid.UUID, **values: Any) -> None:
        n = dunning_notifications
        with _translated_errors(), self._engine.begin() as conn:
            conn.execute(n.update().where(n.c.notification_id == notification_id, n.c.status == "pending")
                         .values(**values))

"""What the dunning handlers need from storage, as a port: one transaction at a time.

The PostgreSQL adapter (``services.dunning.repository``) is the production implementation; the unit tests
drive the same handlers through an in-memory one, and one contract suite runs against both.

Contract of a ``DunningTransaction`` (everything inside one ``with store.transaction() as tx`` commits
together, or nothing does):
- ``claim_event`` inserts the inbox row; False means the event was applied before (do nothing).
- reads that return cases lock them for the rest of the transaction (``lock_due_cases`` skips cases
  another transaction holds, so concurrent timers share the work instead of repeating it).
- ``record_action`` is once-only per (case, action key): False means it was carried out already, and then
  neither its command nor its notification is written again.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from shared.contracts.envelope import Envelope
from shared.domain.dunning import DunningCase

ActionKind = Literal["retry", "notify", "give_up"]


@dataclass(frozen=True, slots=True)
class CaseRecord:
    """A dunning case with what the adapter keeps beside the domain aggregate."""

    case: DunningCase
    customer_id: str
    amount_minor: int
    currency: str
    attempt_numbers: frozenset[int] = frozenset()
    """The invoice's payment attempt numbers whose failure was recorded (a second report is ignored)."""
    failure_attempt_nos: tuple[int | None, ...] = ()
    """attempt_no of each of ``case.failures``, in the same order (for storage)."""
    closed_reason: str | None = None
    next_wake_at: datetime | None = None
    """The case's position in billing time: the earliest instant it has something left to do (as stored)."""
    last_retry_decided_at: datetime | None = None
    """Wall-clock instant the latest retry was decided (how long its outcome has been awaited)."""

    def position(self, now: datetime) -> datetime:
        """The billing instant the case acts at: its next wake-up while the clock is past it, else ``now``.
        Facts and actions are dated here, so a case replays its schedule in order after a clock jump."""
        return min(now, self.next_wake_at) if self.next_wake_at is not None else now


@dataclass(frozen=True, slots=True)
class OutgoingCommand:
    """A command for the billing worker, written to the outbox with the action that decided it."""

    topic: str
    key: str
    envelope: Envelope


@dataclass(frozen=True, slots=True)
class NoticeRecord:
    """A notification decided by a notice action; delivered after commit by the dispatcher."""

    notification_id: uuid.UUID
    case_id: str
    action_key: str
    customer_id: str
    subscription_id: str
    invoice_id: str
    kind: str
    channel: str
    recipient: str | None
    subject: str
    body: str
    decided_at: datetime
    data: Mapping[str, Any] = field(default_factory=dict)


class DunningTransaction(Protocol):
    def claim_event(self, event_id: uuid.UUID, event_type: str, source: str | None) -> bool: ...

    def case_for_invoice(self, invoice_id: str) -> CaseRecord | None: ...

    def open_cases_of_subscription(self, subscription_id: str) -> list[CaseRecord]: ...

    def lock_due_cases(self, now: datetime, limit: int,
                       after: tuple[datetime, str] | None = None) -> list[CaseRecord]:
        """Open cases whose wake-up instant is at or before ``now``, oldest first by (wake-up, case id),
        after the keyset ``after`` (so one run moves past cases that stay due, e.g. awaiting an outcome)."""
        ...

    def failure_instant(self, invoice_id: str, attempt_no: int | None) -> datetime | None:
        """The billing instant the failed charge was decided (its payment attempt's ``requested_at``), if known."""
        ...

    def attempt_reason(self, invoice_id: str, attempt_no: int) -> str | None:
        """Why the invoice's attempt `attempt_no` was made (``initial``, ``scheduled``,
        ``payment_method_updated``, ``manual``: an operator's retry), if written."""
        ...

    def insert_case(self, record: CaseRecord) -> None: ...

    def update_case(self, record: CaseRecord, next_wake_at: datetime | None) -> None: ...

    def record_action(self, case_id: str, action_key: str, kind: ActionKind, at: datetime, *,
                      command: OutgoingCommand | None = None, notice: NoticeRecord | None = None) -> bool: ...

    def customer_email(self, customer_id: str) -> str | None: ...

    def unsettled_payment_attempts(self, invoice_id: str) -> int:
        """Payment attempts of the invoice whose outcome is not known yet (a retry must wait for them)."""
        ...


class DunningStore(Protocol):
    def transaction(self) -> AbstractContextManager[DunningTransaction]: ...

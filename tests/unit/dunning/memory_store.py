"""An in-memory DunningStore for unit tests of the dunning handlers.

It keeps the PostgreSQL adapter's contract (tests/integration/dunning runs the same scenarios against
PostgreSQL): a transaction commits all or nothing, the inbox and (case, action key) are unique, and a
case's carried-out actions are rebuilt from the action rows on every read, as the real adapter does.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime

from services.dunning.ports import ActionKind, CaseRecord, NoticeRecord, OutgoingCommand
from shared.domain.dunning import CompletedAction, DunningStatus


@dataclass
class _State:
    inbox: set[uuid.UUID] = field(default_factory=set)
    cases: dict[str, CaseRecord] = field(default_factory=dict)
    wake: dict[str, datetime | None] = field(default_factory=dict)
    actions: dict[tuple[str, str], tuple[ActionKind, datetime]] = field(default_factory=dict)
    commands: list[OutgoingCommand] = field(default_factory=list)
    notices: list[NoticeRecord] = field(default_factory=list)


class InMemoryDunningStore:
    def __init__(self, customer_emails: dict[str, str] | None = None) -> None:
        self.state = _State()
        self.customer_emails = dict(customer_emails or {})
        self.unsettled_attempts: dict[str, int] = {}
        self.manual_attempts: set[tuple[str, int]] = set()

    @contextmanager
    def transaction(self) -> Iterator[InMemoryTransaction]:
        snapshot = copy.deepcopy(self.state)
        try:
            yield InMemoryTransaction(self)
        except BaseException:
            self.state = snapshot
            raise


class InMemoryTransaction:
    def __init__(self, store: InMemoryDunningStore) -> None:
        self._store = store

    @property
    def _state(self) -> _State:
        return self._store.state

    def claim_event(self, event_id: uuid.UUID, event_type: str, source: str | None) -> bool:
        if event_id in self._state.inbox:
            return False
        self._state.inbox.add(event_id)
        return True

    def case_for_invoice(self, invoice_id: str) -> CaseRecord | None:
        found = [r for r in self._state.cases.values() if r.case.invoice_id == invoice_id]
        return self._loaded(found[0]) if found else None

    def open_cases_of_subscription(self, subscription_id: str) -> list[CaseRecord]:
        return [self._loaded(r) for r in self._state.cases.values()
                if r.case.subscription_id == subscription_id and r.case.status is DunningStatus.OPEN]

    def lock_due_cases(self, now: datetime, limit: int,
                       after: tuple[datetime, str] | None = None) -> list[CaseRecord]:
        due = [(wake, case_id) for case_id, wake in self._state.wake.items()
               if wake is not None and wake <= now and self._state.cases[case_id].case.status is DunningStatus.OPEN
               and (after is None or (wake, case_id) > after)]
        return [self._loaded(self._state.cases[case_id]) for _, case_id in sorted(due)[:limit]]

    def insert_case(self, record: CaseRecord) -> None:
        case_id = record.case.case_id
        if case_id in self._state.cases or self.case_for_invoice(record.case.invoice_id) is not None:
            raise KeyError(f"duplicate dunning case {case_id}")
        self._state.cases[case_id] = record
        self._state.wake[case_id] = None

    def update_case(self, record: CaseRecord, next_wake_at: datetime | None) -> None:
        case_id = record.case.case_id
        if case_id not in self._state.cases:
            raise KeyError(f"no dunning case {case_id}")
        self._state.cases[case_id] = replace(record, case=replace(record.case, completed=()))
        self._state.wake[case_id] = next_wake_at if record.case.status is DunningStatus.OPEN else None

    def record_action(self, case_id: str, action_key: str, kind: ActionKind, at: datetime, *,
                      command: OutgoingCommand | None = None, notice: NoticeRecord | None = None) -> bool:
        if (case_id, action_key) in self._state.actions:
            return False
        self._state.actions[(case_id, action_key)] = (kind, at)
        if command is not None:
            self._state.commands.append(command)
        if notice is not None:
            self._state.notices.append(notice)
        return True

    def customer_email(self, customer_id: str) -> str | None:
        return self._store.customer_emails.get(customer_id)

    def unsettled_payment_attempts(self, invoice_id: str) -> int:
        return self._store.unsettled_attempts.get(invoice_id, 0)

    def failure_instant(self, invoice_id: str, attempt_no: int | None) -> datetime | None:
        return None

    def attempt_reason(self, invoice_id: str, attempt_no: int) -> str | None:
        return "manual" if (invoice_id, attempt_no) in self._store.manual_attempts else None

    def _loaded(self, record: CaseRecord) -> CaseRecord:
        completed = tuple(CompletedAction(key, at) for (case_id, key), (_, at) in self._state.actions.items()
                          if case_id == record.case.case_id)
        return replace(record, case=replace(record.case, completed=completed),
                       next_wake_at=self._state.wake.get(record.case.case_id))

"""Dunning handlers: apply one incoming billing event, or run the schedule, in one transaction each.

Dunning decides, the billing worker acts. The rules (what is due when, hard declines, giving up) are
``shared.domain.dunning``; this module only loads a case, asks the domain, and writes down the outcome:
the case, the action rows (once-only per key), the commands for the worker (outbox rows on
``commands.v1``) and the notifications to deliver, together with the inbox row of the event.

Every instant comes from the billing clock, so a simulated clock moves the whole schedule.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final, TypeVar

from shared.contracts import topics
from shared.contracts.envelope import Envelope, EnvelopeError, new_envelope
from shared.contracts.messages import (
    TYPE_OF,
    GiveUpDunning,
    InvoiceEvent,
    Payload,
    PaymentMethodUpdated,
    SubscriptionStatusChanged,
    parse_payload,
)
from shared.contracts.messages import RetryPayment as RetryPaymentCommand
from shared.domain.clock import Clock
from shared.domain.dunning import (
    DunningAction,
    DunningCase,
    DunningCaseClosedError,
    DunningPolicy,
    DunningStatus,
    GiveUp,
    Notify,
    RetryPayment,
    RetryTrigger,
    awaiting_retry_outcome,
    due_actions,
    next_wake_at,
)
from shared.domain.money import Money
from shared.observability import kv

from .notices import compose_notice
from .ports import CaseRecord, DunningStore, DunningTransaction, NoticeRecord, OutgoingCommand

log = logging.getLogger("billing.dunning")

PRODUCER: Final = "dunning"
# Ids derived from (case, action key) are the same on every run, so a command or a notification decided
# twice (which the unique keys already prevent) would still be one message to its receivers.
_IDS: Final = uuid.UUID("6f1d3c52-0b8e-4e57-9a3c-2b51d7e0c9a4")

# NOTE: wall-clock time, not billing time: how long a retry's outcome may take to come back through the
# worker, the executor and the provider before the schedule stops waiting for it.
DEFAULT_RETRY_OUTCOME_TIMEOUT: Final = timedelta(minutes=15)

_P = TypeVar("_P", bound=Payload)
EventHandler = Callable[["DunningTransaction", Envelope, Payload, datetime], "Outcome"]


class Outcome(StrEnum):
    APPLIED = "applied"
    IGNORED = "ignored"
    DUPLICATE = "duplicate"
    NOT_MINE = "not_mine"
    """A message type dunning does not consume (acknowledged without touching the database)."""


def case_id_for(invoice_id: str) -> str:
    """One case per invoice; deriving its id from the invoice keeps replays and restarts stable."""
    return f"dc_{uuid.uuid5(_IDS, f'case/{invoice_id}').hex}"


def command_id_for(case_id: str, action_key: str) -> uuid.UUID:
    return uuid.uuid5(_IDS, f"command/{case_id}/{action_key}")


def notification_id_for(case_id: str, action_key: str) -> uuid.UUID:
    return uuid.uuid5(_IDS, f"notification/{case_id}/{action_key}")


class DunningHandlers:
    """The dunning service layer. ``handle`` for each consumed event, ``run_due`` from the timer."""

    def __init__(self, store: DunningStore, clock: Clock, *, policy: DunningPolicy | None = None,
                 channel: str = "log", retry_outcome_timeout: timedelta = DEFAULT_RETRY_OUTCOME_TIMEOUT,
                 wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._store = store
        self._clock = clock
        self._retry_outcome_timeout = retry_outcome_timeout
        self._wall_clock = wall_clock
        self._policy = policy or DunningPolicy()
        self._channel = channel
        self._handlers: dict[str, EventHandler] = {
            "invoice.payment_failed": self._on_payment_failed,
            "invoice.paid": self._on_invoice_paid,
            "invoice.voided": self._on_invoice_closed_elsewhere,
            "invoice.uncollectible": self._on_invoice_closed_elsewhere,
            "subscription.status_changed": self._on_subscription_status_changed,
            "payment_method.updated": self._on_payment_method_updated,
        }

    @property
    def consumed_types(self) -> frozenset[str]:
        return frozenset(self._handlers)

    # --- entry points ------------------------------------------------------------------------------------

    def handle(self, envelope: Envelope, *, source: str | None = None) -> Outcome:
        """Apply one event exactly once (inbox row and effects in one transaction).

        Raises ``EnvelopeError`` for a payload that does not validate (terminal: the caller dead-letters
        it); infrastructure errors propagate for the caller to retry the same event.
        """
        handler = self._handlers.get(envelope.type)
        if handler is None:
            return Outcome.NOT_MINE
        payload = parse_payload(envelope)
        now = self._clock.now()
        with self._store.transaction() as tx:
            if not tx.claim_event(envelope.event_id, envelope.type, source):
                return Outcome.DUPLICATE
            outcome = handler(tx, envelope, payload, now)
        log.info("dunning event", extra=kv(event_id=str(envelope.event_id), type=envelope.type,
                                           outcome=outcome.value, source=source))
        return outcome

    def run_due(self, *, batch_size: int = 100) -> int:
        """Carry out every action due at the billing clock's now; returns how many cases were visited.

        Cases are taken in (wake-up, case id) order behind a cursor, so a run ends even when cases stay
        due (a case awaiting a retry's outcome keeps its wake-up instant)."""
        now = self._clock.now()
        visited = 0
        after: tuple[datetime, str] | None = None
        while True:
            with self._store.transaction() as tx:
                records = tx.lock_due_cases(now, batch_size, after)
                for record in records:
                    self._carry_out_and_save(tx, record, now)
            visited += len(records)
            if len(records) < batch_size:
                return visited
            last = records[-1]
            after = (last.next_wake_at or now, last.case.case_id)

    # --- event handlers ----------------------------------------------------------------------------------

    def _on_payment_failed(self, tx: DunningTransaction, envelope: Envelope, payload: Payload,
                           now: datetime) -> Outcome:
        event = _expect(payload, InvoiceEvent)
        hard = event.hard_decline or self._policy.is_hard_decline(event.decline_code)
        record = tx.case_for_invoice(event.invoice_id)
        # NOTE: failures are dated in billing time, never by the producer's wall clock. A case opens at the
        # billing instant the failed charge was decided (the close that issued the invoice; the clock's now
        # when unknown), not later when the news arrives; a later failure is dated at the case's position.
        # So after a clock jump the schedule, and the period closes held back behind it, keep their order.
        if record is None:
            requested = tx.failure_instant(event.invoice_id, event.attempt_no)
            failed_at = min(now, requested) if requested is not None else now
            case = DunningCase.open(case_id=case_id_for(event.invoice_id), invoice_id=event.invoice_id,
                                    subscription_id=event.subscription_id, failed_at=failed_at, hard=hard,
                                    decline_code=event.decline_code, policy=self._policy)
            record = CaseRecord(case=case, customer_id=event.customer_id, amount_minor=event.total_minor,
                                currency=event.currency, attempt_numbers=_attempts(event.attempt_no),
                                failure_attempt_nos=(event.attempt_no,), next_wake_at=failed_at)
            tx.insert_case(record)
        else:
            if record.case.status is not DunningStatus.OPEN:
                log.warning("payment failure on a closed dunning case ignored",
                            extra=kv(case_id=record.case.case_id, invoice_id=event.invoice_id,
                                     status=record.case.status.value))
                return Outcome.IGNORED
            if event.attempt_no is not None and event.attempt_no in record.attempt_numbers:
                return Outcome.IGNORED
            if event.attempt_no is not None and tx.attempt_reason(event.invoice_id, event.attempt_no) == "manual":
                # NOTE: an operator's retry is outside the schedule: its failure is neither a failure of the
                # case nor the outcome of a retry of dunning's in flight (the schedule goes on unchanged). Its
                # number may be the one dunning's next retry asks for: the worker then gives that the next free.
                return Outcome.IGNORED
            record = replace(
                record,
                case=record.case.record_failure(hard, record.position(now), event.decline_code),
                attempt_numbers=record.attempt_numbers | _attempts(event.attempt_no),
                failure_attempt_nos=(*record.failure_attempt_nos, event.attempt_no),
            )
        self._carry_out_and_save(tx, record, now)
        return Outcome.APPLIED

    def _on_invoice_paid(self, tx: DunningTransaction, envelope: Envelope, payload: Payload,
                         now: datetime) -> Outcome:
        event = _expect(payload, InvoiceEvent)
        record = tx.case_for_invoice(event.invoice_id)
        if record is None or record.case.status is DunningStatus.RECOVERED:
            return Outcome.IGNORED
        try:
            case = record.case.record_success(record.position(now))
        except DunningCaseClosedError:
            log.warning("invoice paid after dunning gave up; the worker settles it",
                        extra=kv(case_id=record.case.case_id, invoice_id=event.invoice_id))
            return Outcome.IGNORED
        tx.update_case(replace(record, case=case, closed_reason="paid"), None)
        return Outcome.APPLIED

    def _on_invoice_closed_elsewhere(self, tx: DunningTransaction, envelope: Envelope, payload: Payload,
                                     now: datetime) -> Outcome:
        event = _expect(payload, InvoiceEvent)
        record = tx.case_for_invoice(event.invoice_id)
        if record is None or record.case.status is not DunningStatus.OPEN:
            return Outcome.IGNORED
        self._close_without_collecting(tx, record, now, reason=envelope.type.replace(".", "_"))
        return Outcome.APPLIED

    def _on_subscription_status_changed(self, tx: DunningTransaction, envelope: Envelope, payload: Payload,
                                        now: datetime) -> Outcome:
        event = _expect(payload, SubscriptionStatusChanged)
        if event.new_status.lower() != "cancelled":
            return Outcome.IGNORED
        records = tx.open_cases_of_subscription(event.subscription_id)
        for record in records:
            self._close_without_collecting(tx, record, now, reason="subscription_cancelled")
        return Outcome.APPLIED if records else Outcome.IGNORED

    def _on_payment_method_updated(self, tx: DunningTransaction, envelope: Envelope, payload: Payload,
                                   now: datetime) -> Outcome:
        event = _expect(payload, PaymentMethodUpdated)
        records = tx.open_cases_of_subscription(event.subscription_id)
        for record in records:
            updated = record.case.payment_method_updated(record.position(now))
            self._carry_out_and_save(tx, replace(record, case=updated), now)
        return Outcome.APPLIED if records else Outcome.IGNORED

    # --- carrying out the schedule ------------------------------------------------------------------------

    def _carry_out_and_save(self, tx: DunningTransaction, record: CaseRecord, now: datetime) -> None:
        """Play the case's schedule from its position up to ``now``, one wake-up instant at a time, and save
        where it stopped.

        Each step carries out what is due at that instant, dated at it. The case stops (and keeps its
        position as wake-up instant, so the timer looks again) while a retry cannot run yet: the previous
        retry's outcome is not in, or an attempt's outcome is unknown. So a clock jump of any size plays
        day 3, then 5, then 7, then the give-up, each retry after the previous one's outcome, and the
        position tells the scheduler what dunning has not done yet (see ``scheduler.py``).
        """
        at = record.position(now)
        case = record.case
        while True:
            if self._awaiting_retry_outcome(replace(record, case=case)):
                wake: datetime | None = at
                break
            retry_waits = False
            for action in due_actions(case, at):
                if isinstance(action, RetryPayment) and tx.unsettled_payment_attempts(case.invoice_id):
                    # NOTE: an attempt with an unknown outcome may have charged the customer; reconciliation
                    # settles it first, and the retry stays due until then.
                    retry_waits = True
                    continue
                self._carry_out(tx, replace(record, case=case), action, at)
                case = case.record_done(action, at)
            wake = next_wake_at(case, at)
            if retry_waits or wake is None or wake > now or wake <= at:
                wake = at if retry_waits else wake
                break
            if self._awaiting_retry_outcome(replace(record, case=case)):
                # NOTE: the case stays at the retry's slot until its outcome is in: the reminder of that slot
                # waits for it (``due_actions``), and the outcome is dated there.
                wake = at
                break
            at = wake
        tx.update_case(replace(record, case=case), wake)

    def _awaiting_retry_outcome(self, record: CaseRecord) -> bool:
        if not awaiting_retry_outcome(record.case):
            return False
        decided = record.last_retry_decided_at
        if decided is not None and self._wall_clock() - decided > self._retry_outcome_timeout:
            # NOTE: a retry whose outcome never comes (the worker refused or dead-lettered the command) must
            # not hold the case forever; after this wall-clock bound the schedule goes on without it.
            log.warning("no outcome for a payment retry; the schedule goes on without it",
                        extra=kv(case_id=record.case.case_id, invoice_id=record.case.invoice_id,
                                 decided_at=decided.isoformat()))
            return False
        return True

    def _carry_out(self, tx: DunningTransaction, record: CaseRecord, action: DunningAction,
                   now: datetime) -> None:
        case = record.case
        if isinstance(action, RetryPayment):
            scheduled = action.trigger is RetryTrigger.SCHEDULE
            retry = RetryPaymentCommand(subscription_id=case.subscription_id, customer_id=record.customer_id,
                                        invoice_id=case.invoice_id,
                                        attempt_no=max((*record.attempt_numbers, case.attempts)) + 1,
                                        reason="scheduled" if scheduled else "payment_method_updated")
            recorded = tx.record_action(case.case_id, action.key, "retry", now,
                                        command=self._command(case, action.key, retry, now))
        elif isinstance(action, GiveUp):
            give_up = GiveUpDunning(subscription_id=case.subscription_id, customer_id=record.customer_id,
                                    invoice_id=case.invoice_id)
            recorded = tx.record_action(case.case_id, action.key, "give_up", now,
                                        command=self._command(case, action.key, give_up, now))
        else:
            recorded = tx.record_action(case.case_id, action.key, "notify", now,
                                        notice=self._notice(tx, record, action, now))
        log.info("dunning action", extra=kv(case_id=case.case_id, invoice_id=case.invoice_id,
                                            subscription_id=case.subscription_id, action=action.key,
                                            day=case.day_of(now), recorded=recorded))

    def _command(self, case: DunningCase, action_key: str, payload: Payload, now: datetime) -> OutgoingCommand:
        envelope = new_envelope(TYPE_OF[type(payload)], payload.model_dump(mode="json"), producer=PRODUCER,
                                occurred_at=now, correlation_id=case.case_id,
                                event_id=command_id_for(case.case_id, action_key))
        return OutgoingCommand(topic=topics.COMMANDS, key=case.subscription_id, envelope=envelope)

    def _notice(self, tx: DunningTransaction, record: CaseRecord, action: Notify, now: datetime) -> NoticeRecord:
        case = record.case
        subject, body = compose_notice(action.kind, invoice_id=case.invoice_id,
                                       amount=Money(record.amount_minor, record.currency), day=action.day,
                                       give_up_after_days=case.policy.give_up_after_days)
        return NoticeRecord(
            notification_id=notification_id_for(case.case_id, action.key), case_id=case.case_id,
            action_key=action.key, customer_id=record.customer_id, subscription_id=case.subscription_id,
            invoice_id=case.invoice_id, kind=action.kind.value, channel=self._channel,
            recipient=tx.customer_email(record.customer_id), subject=subject, body=body, decided_at=now,
            data={"day": action.day, "invoice_id": case.invoice_id, "subscription_id": case.subscription_id,
                  "amount_minor": record.amount_minor, "currency": record.currency,
                  "failed_attempts": case.attempts})

    def _close_without_collecting(self, tx: DunningTransaction, record: CaseRecord, now: datetime, *,
                                  reason: str) -> None:
        # NOTE: the invoice was voided or the subscription cancelled by someone else: nothing is left to
        # collect, so the case stops without a give-up command or a final notice (the domain's abandon).
        closed = record.case.abandon(record.position(now), reason)
        tx.update_case(replace(record, case=closed, closed_reason=reason), None)


def _expect(payload: Payload, model: type[_P]) -> _P:
    if not isinstance(payload, model):
        raise EnvelopeError(f"expected a {model.__name__} payload, got {type(payload).__name__}")
    return payload


def _attempts(attempt_no: int | None) -> frozenset[int]:
    return frozenset() if attempt_no is None else frozenset({attempt_no})

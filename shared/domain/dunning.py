"""Dunning: when to retry a failed payment, when to remind the customer, when to give up.

Contract:
- ``DunningPolicy`` is data: retry and notification offsets in days after the first failure, and the day
  the case gives up (invoice UNCOLLECTIBLE, subscription CANCELLED, customer told).
- A ``DunningCase`` is a frozen aggregate; every change returns a new case. It records facts (failures,
  payment-method updates, a success) and which actions were carried out (``record_done``).
- ``due_actions(case, now)`` is pure: the actions due at ``now`` that were not carried out yet. Every
  action has a stable ``key`` (``retry:3``, ``notify:1``, ``give_up``, ...) unique within its case, so the
  adapter can make each action once-only with a unique constraint on (case_id, key) even across
  restarts, and calling ``due_actions`` twice returns nothing new once the first answer was recorded.
- Days are whole 24-hour days from the instant of the first failure (``opened_at``), in UTC, so a
  simulated billing clock moves the schedule exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

from shared.domain.calendar import ensure_utc
from shared.domain.errors import InvalidValueError, LifecycleError
from shared.domain.payment_attempt import HARD_DECLINE_CODES, is_hard_decline

_ONE_DAY: Final = timedelta(days=1)


class DunningCaseClosedError(LifecycleError):
    """A failure or success was recorded on a case that already recovered or gave up."""


def _require_offsets(offsets: Sequence[int], what: str, give_up_after_days: int) -> None:
    for offset in offsets:
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TypeError(f"{what} must be ints, got {offset!r}")
        if not 0 < offset < give_up_after_days:
            raise InvalidValueError(f"{what} must lie in 1..{give_up_after_days - 1}, got {offset}")
    if list(offsets) != sorted(set(offsets)):
        raise InvalidValueError(f"{what} must be strictly increasing, got {tuple(offsets)}")


@dataclass(frozen=True, slots=True)
class DunningPolicy:
    """The schedule of one dunning campaign, in whole days after the first failed payment."""

    retry_offsets_days: tuple[int, ...] = (3, 5, 7)
    notify_offsets_days: tuple[int, ...] = (1, 3, 7)
    give_up_after_days: int = 14
    # NOTE: which declines are hard is the payment attempts' one classification (gateways, webhooks, dunning).
    hard_decline_codes: frozenset[str] = HARD_DECLINE_CODES

    def __post_init__(self) -> None:
        days = self.give_up_after_days
        if isinstance(days, bool) or not isinstance(days, int) or days < 1:
            raise InvalidValueError(f"give_up_after_days must be a positive int, got {days!r}")
        object.__setattr__(self, "retry_offsets_days", tuple(self.retry_offsets_days))
        object.__setattr__(self, "notify_offsets_days", tuple(self.notify_offsets_days))
        object.__setattr__(self, "hard_decline_codes", frozenset(self.hard_decline_codes))
        _require_offsets(self.retry_offsets_days, "retry offsets", days)
        _require_offsets(self.notify_offsets_days, "notification offsets", days)

    def is_hard_decline(self, decline_code: str | None) -> bool:
        """True when the provider's decline code says the payment method cannot be charged again."""
        return is_hard_decline(decline_code, self.hard_decline_codes)


class DunningStatus(StrEnum):
    OPEN = "open"
    RECOVERED = "recovered"
    GIVEN_UP = "given_up"


class NotificationKind(StrEnum):
    PAYMENT_FAILED = "payment_failed"
    """A scheduled reminder (days 1, 3, 7 by default): the payment failed, please check your card."""
    PAYMENT_METHOD_REQUIRED = "payment_method_required"
    """Sent at once after a hard decline: this card cannot be charged, add another one."""
    SUBSCRIPTION_CANCELLED = "subscription_cancelled"
    """The final notice sent with the give-up."""


class RetryTrigger(StrEnum):
    SCHEDULE = "schedule"
    PAYMENT_METHOD_UPDATED = "payment_method_updated"


@dataclass(frozen=True, slots=True)
class RetryPayment:
    """Charge the case's invoice again. ``sequence`` numbers payment-method updates (1, 2, ...)."""

    day: int
    trigger: RetryTrigger = RetryTrigger.SCHEDULE
    sequence: int = 0

    @property
    def key(self) -> str:
        if self.trigger is RetryTrigger.PAYMENT_METHOD_UPDATED:
            return f"retry:payment_method:{self.sequence}"
        return f"retry:{self.day}"


@dataclass(frozen=True, slots=True)
class Notify:
    """Tell the customer. ``day`` is the schedule day (reminders) or the day it became due;
    ``sequence`` numbers hard declines (1, 2, ...) for ``PAYMENT_METHOD_REQUIRED``."""

    kind: NotificationKind
    day: int
    sequence: int = 0

    @property
    def key(self) -> str:
        if self.kind is NotificationKind.PAYMENT_FAILED:
            return f"notify:{self.day}"
        if self.kind is NotificationKind.PAYMENT_METHOD_REQUIRED:
            return f"notify:payment_method_required:{self.sequence}"
        return "notify:final"


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop collecting: the worker marks the invoice UNCOLLECTIBLE and cancels the subscription."""

    day: int

    @property
    def key(self) -> str:
        return "give_up"


DunningAction = RetryPayment | Notify | GiveUp


@dataclass(frozen=True, slots=True)
class PaymentFailure:
    at: datetime
    hard: bool
    decline_code: str | None = None


@dataclass(frozen=True, slots=True)
class CompletedAction:
    """An action the adapter carried out (or durably scheduled), keyed once per case."""

    key: str
    at: datetime


@dataclass(frozen=True, slots=True)
class DunningCase:
    """The collection effort for one unpaid invoice, from its first failed payment to its outcome.

    # NOTE: a hard decline stops scheduled retries (the same card cannot succeed) and notifies the
    # customer at once, but the case stays open until ``give_up_after_days`` like any other: the customer
    # can still recover by adding a payment method, which triggers an immediate retry and resumes the
    # schedule. Giving up at once would cancel customers who only need a day to replace a lost card.
    """

    case_id: str
    invoice_id: str
    subscription_id: str
    opened_at: datetime
    policy: DunningPolicy = field(default_factory=DunningPolicy)
    status: DunningStatus = DunningStatus.OPEN
    failures: tuple[PaymentFailure, ...] = ()
    payment_method_updates: tuple[datetime, ...] = ()
    completed: tuple[CompletedAction, ...] = ()
    retries_suspended: bool = False
    closed_at: datetime | None = None
    abandon_reason: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "opened_at", ensure_utc(self.opened_at, "opened_at"))

    @classmethod
    def open(
        cls,
        *,
        case_id: str,
        invoice_id: str,
        subscription_id: str,
        failed_at: datetime,
        hard: bool = False,
        decline_code: str | None = None,
        policy: DunningPolicy | None = None,
    ) -> DunningCase:
        """Open a case at the instant of the invoice's first failed payment."""
        case = cls(
            case_id=case_id,
            invoice_id=invoice_id,
            subscription_id=subscription_id,
            opened_at=failed_at,
            policy=policy or DunningPolicy(),
        )
        return case.record_failure(hard, failed_at, decline_code)

    # --- facts -----------------------------------------------------------------------------------------

    def record_failure(self, hard: bool, at: datetime, decline_code: str | None = None) -> DunningCase:
        """A payment attempt failed; a hard decline suspends scheduled retries until a new payment method."""
        self._require_open("record a payment failure")
        failure = PaymentFailure(at=ensure_utc(at), hard=hard, decline_code=decline_code)
        return replace(
            self,
            failures=(*self.failures, failure),
            retries_suspended=self.retries_suspended or hard,
        )

    def record_success(self, at: datetime) -> DunningCase:
        """The invoice was paid (retry, webhook or manual payment): the case is recovered.

        Idempotent on a recovered case; a case that gave up cannot recover (the subscription is already
        cancelled), so that raises ``DunningCaseClosedError``.
        """
        if self.status is DunningStatus.RECOVERED:
            return self
        self._require_open("record a successful payment")
        return replace(self, status=DunningStatus.RECOVERED, closed_at=ensure_utc(at))

    def abandon(self, at: datetime, reason: str) -> DunningCase:
        """Stop the case because nothing is left to collect: its invoice was voided, or the subscription was
        cancelled by someone else (an operator, the customer, another rule).

        # NOTE: an abandoned case is closed as GIVEN_UP (collection stopped for good; the stored status
        # vocabulary is open / recovered / given_up) but without the give-up action: no give-up command
        # (the invoice and subscription were already settled elsewhere) and no final notice (the customer
        # owes nothing). ``is_abandoned`` tells it apart from a give-up, also after reloading from storage,
        # and ``due_actions`` offers it nothing, even past the give-up day.

        Idempotent on a closed case (recovered, given up or abandoned): there is nothing left to stop.
        """
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidValueError(f"abandoning a dunning case needs a reason, got {reason!r}")
        instant = ensure_utc(at)
        if self.status is not DunningStatus.OPEN:
            return self
        return replace(self, status=DunningStatus.GIVEN_UP, closed_at=instant, abandon_reason=reason)

    def payment_method_updated(self, at: datetime) -> DunningCase:
        """The customer added a payment method: an immediate retry becomes due and retries resume.

        A no-op on a closed case: updating a card after recovery or cancellation is not dunning's business.
        """
        if self.status is not DunningStatus.OPEN:
            return self
        return replace(
            self,
            payment_method_updates=(*self.payment_method_updates, ensure_utc(at)),
            retries_suspended=False,
        )

    def record_done(self, action: DunningAction, at: datetime) -> DunningCase:
        """The adapter carried out ``action`` at ``at``. Idempotent per key; a give-up closes the case."""
        if self.is_done(action.key):
            return self
        instant = ensure_utc(at)
        case = replace(self, completed=(*self.completed, CompletedAction(action.key, instant)))
        if isinstance(action, GiveUp) and case.status is DunningStatus.OPEN:
            case = replace(case, status=DunningStatus.GIVEN_UP, closed_at=instant)
        return case

    # --- queries ---------------------------------------------------------------------------------------

    @property
    def attempts(self) -> int:
        """Failed payment attempts so far, the first failure included."""
        return len(self.failures)

    @property
    def hard_declines(self) -> int:
        return sum(1 for failure in self.failures if failure.hard)

    @property
    def is_abandoned(self) -> bool:
        """Closed by ``abandon``: stopped without the give-up action (a real give-up records it)."""
        return self.status is DunningStatus.GIVEN_UP and not self.is_done(GiveUp(self.policy.give_up_after_days).key)

    def is_done(self, key: str) -> bool:
        return any(done.key == key for done in self.completed)

    def day_of(self, at: datetime) -> int:
        """Whole days since the first failure (0 on the day of the failure, negative before it)."""
        return (ensure_utc(at) - self.opened_at) // _ONE_DAY

    def slot_start(self, day: int) -> datetime:
        """The instant day ``day`` of the schedule begins."""
        return self.opened_at + day * _ONE_DAY

    def _require_open(self, what: str) -> None:
        if self.status is not DunningStatus.OPEN:
            raise DunningCaseClosedError(f"cannot {what} on dunning case {self.case_id}: it is {self.status.value}")

    def carried_out_since(self, prefix: str, since: datetime) -> bool:
        """Whether an action whose key starts with ``prefix`` was carried out at or after ``since``."""
        return any(done.key.startswith(prefix) and done.at >= since for done in self.completed)


def _latest_due(offsets: Sequence[int], day: int) -> int | None:
    due = [offset for offset in offsets if offset <= day]
    return due[-1] if due else None


def due_actions(case: DunningCase, now: datetime) -> list[DunningAction]:
    """What to do at ``now``, in order: at most one retry, at most one notification, then the give-up.

    Rules:
    - From day ``give_up_after_days`` on, only the give-up and its final notice are due.
    - A payment-method update makes an immediate retry due; otherwise the latest scheduled retry day
      that has been reached is due, unless retries are suspended by a hard decline or any retry was
      already carried out since that day began.
    - After a hard decline its notice is due at once; otherwise the latest reminder day reached is due,
      unless a notification was already sent since that day began, or a retry is due or awaiting its
      outcome (the reminder follows a failed retry; a retry that succeeds closes the case without one).

    # NOTE: only the *latest* slot reached at ``now`` is offered. The dunning service asks at each of a
    # case's wake-up instants in turn (``next_wake_at``), not at the clock's now, so after a clock jump or
    # an outage the schedule is replayed slot by slot in billing-time order, each retry after the previous
    # one's outcome (``awaiting_retry_outcome``): a give-up never comes before the retries due earlier.
    """
    instant = ensure_utc(now)
    day = case.day_of(instant)
    policy = case.policy
    if day < 0 or case.is_abandoned:
        return []

    if day >= policy.give_up_after_days:
        if case.status is DunningStatus.RECOVERED:
            return []
        ending: list[DunningAction] = [
            GiveUp(policy.give_up_after_days),
            Notify(NotificationKind.SUBSCRIPTION_CANCELLED, policy.give_up_after_days),
        ]
        return [action for action in ending if not case.is_done(action.key)]
    if case.status is not DunningStatus.OPEN:
        return []

    due_retry = _due_retry(case, day)
    due_notice = _due_notice(case, day)
    retrying = due_retry is not None or awaiting_retry_outcome(case)
    if retrying and due_notice is not None and due_notice.kind is NotificationKind.PAYMENT_FAILED:
        # NOTE: "your payment failed" is never sent beside a retry that may still collect the invoice: the
        # reminder waits for the retry's outcome. A failed retry makes it due (dated at the failure), a paid
        # invoice closes the case without it. A retry whose outcome never comes holds the reminders, not the
        # later retries nor the give-up and its final notice.
        due_notice = None
    return [action for action in (due_retry, due_notice) if action is not None]


def _due_retry(case: DunningCase, day: int) -> RetryPayment | None:
    if case.payment_method_updates:
        after_update = RetryPayment(day, RetryTrigger.PAYMENT_METHOD_UPDATED, len(case.payment_method_updates))
        if not case.is_done(after_update.key):
            return after_update
    if case.retries_suspended:
        return None
    retry_day = _latest_due(case.policy.retry_offsets_days, day)
    if retry_day is None:
        return None
    scheduled = RetryPayment(retry_day)
    if case.is_done(scheduled.key) or case.carried_out_since("retry:", case.slot_start(retry_day)):
        return None
    return scheduled


def _due_notice(case: DunningCase, day: int) -> Notify | None:
    if case.hard_declines:
        last_hard = next(failure for failure in reversed(case.failures) if failure.hard)
        hard_notice = Notify(NotificationKind.PAYMENT_METHOD_REQUIRED, case.day_of(last_hard.at), case.hard_declines)
        if not case.is_done(hard_notice.key):
            return hard_notice
    notify_day = _latest_due(case.policy.notify_offsets_days, day)
    if notify_day is None:
        return None
    reminder = Notify(NotificationKind.PAYMENT_FAILED, notify_day)
    if case.is_done(reminder.key) or case.carried_out_since("notify:", case.slot_start(notify_day)):
        return None
    return reminder


def awaiting_retry_outcome(case: DunningCase) -> bool:
    """Whether a retry was carried out whose outcome is not recorded yet.

    Every retry ends in exactly one recorded failure or in a success, which closes the case; so on an open
    case, as many retries as failures (the first failure opened the case) means the last retry is still in
    flight. The later slots of the schedule wait for it: another retry must not be sent beside it, and the
    give-up must never overtake a retry that may still collect the invoice.
    """
    if case.status is not DunningStatus.OPEN:
        return False
    retries = sum(1 for done in case.completed if done.key.startswith("retry:"))
    return retries >= len(case.failures)


def next_wake_at(case: DunningCase, now: datetime) -> datetime | None:
    """When the timer should look at the case again: ``now`` if something is due, else the next schedule
    day after ``now``, or ``None`` once the case is closed and nothing is left to do.

    Facts recorded later (a payment-method update, a hard decline) make actions due at once; the caller
    re-evaluates after recording them.
    """
    instant = ensure_utc(now)
    if due_actions(case, instant):
        return instant
    if case.status is not DunningStatus.OPEN:
        return None
    days = [*case.policy.notify_offsets_days, case.policy.give_up_after_days]
    if not case.retries_suspended:
        days.extend(case.policy.retry_offsets_days)
    upcoming = [case.slot_start(day) for day in days if case.slot_start(day) > instant]
    return min(upcoming) if upcoming else None

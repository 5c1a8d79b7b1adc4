"""Report credits at the edge: the synchronous, strongly consistent part of the billing engine.

How one "use a report credit" request is decided
------------------------------------------------
1. Requests for the same org that arrive while a decision for that org is in flight are queued and
   decided together as one *batch* (``_OrgLane``), up to ``MAX_BATCH`` requests, so a hot org costs one
   write per batch instead of one per request.
2. The batch is decided on the org's state: the state this process remembers from its last read or write
   (``_Known``, valid while its version is current), else a fresh read (``QuotaRepository.load``). The
   domain decides, request by request in arrival order (``shared.domain.quota.decide`` on the counters
   the previous request left): the rules (allotment, top-ups, per-user limit, trial, reasons) live only
   there. A batch decided on remembered state that would refuse everything is decided again on a fresh
   read: refusals are only ever given on state read now.
3. The outcome is committed by ONE conditional statement (compare-and-set on the org's ``version``): the
   counters, one row per admitted enquiry, a ``usage.recorded`` outbox row per admission and any new alert
   rows with their ``billing-events.v1`` outbox rows. If another edge process, a top-up or a plan change
   wrote in between (or an enquiry the batch refused had been admitted before), nothing is written and
   the batch is decided again on fresh state; after a loss to another process the org is decided under
   its row lock (``QuotaRepository.decide_locked``) for ``CONTENTION_SECONDS``, so processes sharing a hot
   org serialise instead of invalidating each other. CHECK constraints (used <= allotment, user used <=
   limit, trial used <= trial reports) are the backstop.
4. Idempotency: an enquiry id already admitted gets its stored answer back (body identical to the first
   answer). Duplicates inside one batch share one decision; a duplicate committed concurrently by another
   process makes the statement fail on the (org, enquiry) primary key and the batch is re-decided, where
   the enquiry is then found. Denials are not stored: a denied enquiry may be retried after a top-up.
5. The month is the calendar month of the billing clock's "now" in the org's zone, computed per batch,
   so the first request after midnight on the 1st reads (and creates) the new month's counters. No job.

Alerts (80 % / 100 % or the org's thresholds, org limit reached, user limit reached, trial exhausted,
"on track to hit the monthly limit") are evaluated after every batch from the state the batch leaves
(level-triggered, with the domain's ``crossed_thresholds`` and ``forecast_limit``), written in the same
statement as the consumption, and kept exactly once per (org, period, kind, threshold, user) by a unique
constraint: a restart, a retry or a second edge process cannot send one twice. After commit each new alert
is also handed to the Notifier port (at-least-once, keyed by the alert's event id); the durable copy is
the outbox event on ``billing-events.v1``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import orjson

from services.ingest.metrics import EdgeMetrics
from shared.adapters.clock import SystemClock
from shared.adapters.notify.port import Notification, Notifier
from shared.adapters.postgres.quota_repository import (
    AlertKey,
    BatchWrite,
    ConsumptionRow,
    DuplicateEnquiry,
    MonthRow,
    NewAlert,
    NewConsumption,
    OrgRow,
    OrgSnapshot,
    QuotaRepository,
    QuotaStoreError,
    UnknownOrg,
)
from shared.contracts import topics
from shared.contracts.envelope import new_envelope
from shared.contracts.messages import QuotaAlert
from shared.domain.calendar import Period, calendar_month, zone
from shared.domain.catalog import Catalog, Plan, QuotaWindow
from shared.domain.clock import Clock
from shared.domain.errors import DomainError
from shared.domain.quota import (
    DEFAULT_ALERT_THRESHOLDS_PERCENT,
    MonthlyUsage,
    OrgQuotaState,
    QuotaDecision,
    QuotaDenialReason,
    TrialAllowance,
    crossed_thresholds,
    decide,
    effective_allotment,
    forecast_limit,
    remaining,
)
from shared.observability import kv

_log = logging.getLogger("services.ingest.quota")

PRODUCER = "ingest"
REPORT_PLAN_FAMILY = "report_quota"
REPORT_METER = "reports"
MAX_BATCH = 256
MAX_ATTEMPTS = 20
# NOTE: after a compare-and-set lost to another edge process, that org's batches are decided under its
# row lock for this long: optimistic writes from several processes on one hot org would keep
# invalidating each other's reads, while the lock makes every batch succeed at the first attempt.
CONTENTION_SECONDS = 2.0
_EVENT_NAMESPACE = uuid.UUID("6f1c5c4e-8a7b-4d0e-9a53-3a2f61e0c7d1")

THRESHOLD_REACHED = "quota.threshold_reached"
LIMIT_REACHED = "quota.limit_reached"
ON_TRACK_TO_EXCEED = "quota.on_track_to_exceed"


class QuotaRequestError(Exception):
    """A request the quota service refuses whatever the state (unknown plan, bad value): a 4xx."""

    def __init__(self, status: int, slug: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail


class _TimezoneMoved(Exception):
    """The org's time zone changed since the month was computed: compute it again."""

    def __init__(self, timezone: str) -> None:
        super().__init__(timezone)
        self.timezone = timezone


class QuotaContentionError(Exception):
    """The batch lost the compare-and-set ``MAX_ATTEMPTS`` times in a row (retryable, 503)."""


@dataclass(frozen=True, slots=True)
class CreditAnswer:
    """The answer to one "use a report credit" request (the same answer for every retry of an enquiry)."""

    org_id: str
    enquiry_id: str
    user_id: str
    allowed: bool
    reason: QuotaDenialReason | None
    month: Period
    org_allotment: int
    org_remaining: int
    user_limit: int | None
    user_remaining: int | None
    on_trial: bool
    replayed: bool = False

    def body(self) -> dict[str, object]:
        return {
            "org_id": self.org_id, "enquiry_id": self.enquiry_id, "user_id": self.user_id,
            "allowed": self.allowed, "reason": self.reason.value if self.reason else None,
            "month_start": self.month.start.isoformat(), "month_end": self.month.end.isoformat(),
            "org_allotment": self.org_allotment, "org_remaining": self.org_remaining,
            "user_limit": self.user_limit, "user_remaining": self.user_remaining, "on_trial": self.on_trial,
        }


@dataclass(frozen=True, slots=True)
class QuotaView:
    """An org's quota state at one instant (the read endpoint)."""

    org_id: str
    plan_id: str | None
    plan_name: str | None
    plan_monthly_reports: int | None
    timezone: str
    month: Period
    top_ups: int
    allotment: int
    used: int
    remaining: int
    per_user_monthly_limit: int | None
    alert_thresholds_percent: tuple[int, ...]
    on_trial: bool
    trial_started_at: datetime | None
    trial_ends_at: datetime | None
    trial_reports: int
    trial_used: int
    user_id: str | None = None
    user_used: int | None = None
    user_remaining: int | None = None


@dataclass
class _Pending:
    user_id: str
    enquiry_id: str
    future: asyncio.Future[CreditAnswer]


@dataclass
class _OrgLane:
    """The requests of one org waiting for the next batch; ``running`` while a batch is being decided."""

    pending: list[_Pending] = field(default_factory=list)
    running: bool = False


@dataclass(frozen=True, slots=True)
class _Known:
    """The state of one org as this process last read or wrote it, valid while ``version`` is current.

    A batch decided on it costs one round trip (the compare-and-set write) instead of a read and a write:
    if anyone else wrote the org meanwhile, the write matches no row and the batch is decided again on a
    fresh read. ``user_used`` holds the exact month counts of the users this process has seen at this
    version; with a per-user limit, a batch naming a user not in it is decided on a fresh read.
    """

    snapshot: OrgSnapshot
    month_start: datetime
    user_used: dict[str, int]

    def covers(self, users: Sequence[str]) -> bool:
        if self.snapshot.org.per_user_monthly_limit is None:
            return True
        return all(user in self.user_used for user in users)

    def snapshot_for(self, users: Sequence[str]) -> OrgSnapshot:
        known = self.user_used
        return replace(self.snapshot, user_used={u: known[u] for u in users if u in known}, prior={})

    @classmethod
    def after(cls, snapshot: OrgSnapshot, month: Period, write: BatchWrite, version: int,
              users: Sequence[str], previous: _Known | None) -> _Known:
        """The org's state once ``write`` is committed (at ``version``) on top of ``snapshot``."""
        user_used = dict(previous.user_used) if previous is not None and \
            previous.snapshot.org.version == snapshot.org.version and previous.month_start == month.start else {}
        for user in users:
            user_used[user] = snapshot.user_used.get(user, 0)
        for user, count in write.user_grants.items():
            user_used[user] = user_used.get(user, 0) + count
        if len(user_used) > 50_000:
            user_used = {user: user_used[user] for user in users}
        row = snapshot.month
        granted = len(write.consumptions)
        month_row = MonthRow(month.start, month.end, row.plan_monthly_reports if row else write.month_plan_reports,
                             row.top_ups if row else 0, (row.used if row else 0) + granted)
        org = replace(snapshot.org, version=version, trial_used=snapshot.org.trial_used + write.trial_delta)
        alerts = snapshot.alerts_sent | {alert.key for alert in write.alerts}
        return cls(replace(snapshot, org=org, month=month_row, user_used={}, prior={}, alerts_sent=alerts),
                   month.start, user_used)


def report_plans(catalog: Catalog) -> tuple[dict[str, Plan], Plan | None]:
    """The monthly report plans by lower-cased id and name, and the trial plan (if the catalog has one)."""
    monthly: dict[str, Plan] = {}
    trial: Plan | None = None
    for plan in catalog.plans_in_family(REPORT_PLAN_FAMILY):
        if plan.quota is None:
            continue
        if plan.quota.window is QuotaWindow.TRIAL:
            trial = plan
        elif plan.quota.window is QuotaWindow.CALENDAR_MONTH:
            monthly[plan.id.lower()] = plan
            monthly[plan.name.lower()] = plan
    return monthly, trial


def _event_id(*parts: object) -> uuid.UUID:
    return uuid.uuid5(_EVENT_NAMESPACE, "|".join(str(part) for part in parts))


class QuotaService:
    """Report-credit plans, per-user limits, trial, top-ups, alerts; see the module docstring."""

    def __init__(self, repository: QuotaRepository, clock: Clock, catalog: Catalog,
                 notifier: Notifier | None = None, metrics: EdgeMetrics | None = None) -> None:
        self._repository = repository
        self._clock = clock
        self._plans, trial_plan = report_plans(catalog)
        if trial_plan is not None and trial_plan.quota is not None:
            self._trial = TrialAllowance(trial_plan.quota.limit, trial_plan.quota.window_days or 14)
        else:
            self._trial = TrialAllowance()
        self._report_event_type = catalog.meter(REPORT_METER).event_type
        self._notifier = notifier
        self._lanes: dict[str, _OrgLane] = {}
        self._timezones: dict[str, str] = {}
        self._known: dict[str, _Known] = {}
        self._contended: dict[str, float] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._clock_blocks = not isinstance(clock, SystemClock)
        metrics = metrics or EdgeMetrics()
        self._batch_size = metrics.quota_batch_size
        self._batch_seconds = metrics.quota_batch_seconds

    async def now(self) -> datetime:
        """The billing clock's instant (the simulated clock reads PostgreSQL, so off the event loop; the
        system clock is read in place: a thread hop would cost more than the read)."""
        if self._clock_blocks:
            return await asyncio.to_thread(self._clock.now)
        return self._clock.now()

    # --- use a report credit ------------------------------------------------------------------------

    async def use_credit(self, org_id: str, user_id: str, enquiry_id: str) -> CreditAnswer:
        """Admit or refuse one report; an enquiry id admitted before gets the original answer back."""
        loop = asyncio.get_running_loop()
        pending = _Pending(user_id, enquiry_id, loop.create_future())
        lane = self._lanes.get(org_id)
        if lane is None:
            lane = self._lanes[org_id] = _OrgLane()
        lane.pending.append(pending)
        if not lane.running:
            lane.running = True
            self._spawn(self._drain(org_id, lane))
        return await pending.future

    async def _drain(self, org_id: str, lane: _OrgLane) -> None:
        try:
            while lane.pending:
                batch, lane.pending = lane.pending[:MAX_BATCH], lane.pending[MAX_BATCH:]
                self._batch_size.observe(len(batch))
                try:
                    answers = await self._decide_batch(org_id, batch)
                except Exception as error:  # every waiter gets the failure; the lane goes on
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(error)
                    continue
                for item, answer in zip(batch, answers, strict=True):
                    if not item.future.done():
                        item.future.set_result(answer)
        finally:
            lane.running = False
            if not lane.pending and self._lanes.get(org_id) is lane:
                del self._lanes[org_id]

    async def _decide_batch(self, org_id: str, batch: Sequence[_Pending]) -> list[CreditAnswer]:
        users = sorted({item.user_id for item in batch})
        enquiries = sorted({item.enquiry_id for item in batch})
        fresh = False  # True: decide on a fresh read (the remembered state was refused or is stale)
        for _attempt in range(MAX_ATTEMPTS):
            at = await self.now()
            known = None if fresh else self._known.get(org_id)
            tz = known.snapshot.org.timezone if known is not None else self._timezones.get(org_id, "UTC")
            month = calendar_month(at, tz)
            started = time.perf_counter()
            if fresh or self._contended.get(org_id, 0.0) > time.monotonic():
                try:
                    snapshot, write, version, inserted, answers = await self._decide_locked(
                        org_id, month, at, users, enquiries, batch)
                except _TimezoneMoved as moved:
                    self._timezones[org_id] = moved.timezone
                    continue
                except UnknownOrg:
                    self._known.pop(org_id, None)
                    return [self._no_plan_answer(org_id, item, month) for item in batch]
                except DuplicateEnquiry:
                    continue
                self._batch_seconds.labels("locked").observe(time.perf_counter() - started)
                return self._settle(org_id, snapshot, month, at, users, write, version, inserted, answers,
                                    batch, known)
            if known is not None and known.month_start == month.start and known.covers(users):
                snapshot, remembered = known.snapshot_for(users), True
            else:
                try:
                    snapshot = await self._repository.load(org_id, month.start, users, enquiries)
                except UnknownOrg:
                    self._known.pop(org_id, None)
                    return [self._no_plan_answer(org_id, item, month) for item in batch]
                if snapshot.org.timezone != tz:
                    self._timezones[org_id] = snapshot.org.timezone
                    continue
                remembered = False
            answers, write = self._decide(snapshot, month, at, batch)
            if remembered and not write.consumptions:
                fresh = True  # a refusal is only ever given on state read now
                continue
            try:
                if write.consumptions:
                    committed, inserted = await self._repository.commit_batch(write)
                    if committed is None:
                        # another edge process wrote the org: decide under its row lock for a while
                        if len(self._contended) > 10_000:
                            self._contended.clear()
                        self._contended[org_id] = time.monotonic() + CONTENTION_SECONDS
                        fresh = True
                        continue
                    version = committed
                else:
                    version = snapshot.org.version
                    inserted = await self._repository.record_alerts(
                        org_id, at, write.alerts, write.alert_topic, write.message_key)
            except DuplicateEnquiry:
                fresh = True
                continue
            except QuotaStoreError:
                if not remembered:
                    raise
                fresh = True
                continue
            self._batch_seconds.labels("remembered" if remembered else "read").observe(
                time.perf_counter() - started)
            return self._settle(org_id, snapshot, month, at, users, write, version, inserted, answers, batch,
                                known)
        self._known.pop(org_id, None)
        raise QuotaContentionError(f"org {org_id}: the quota state kept changing; retry")

    async def _decide_locked(self, org_id: str, month: Period, at: datetime, users: Sequence[str],
                             enquiries: Sequence[str], batch: Sequence[_Pending]
                             ) -> tuple[OrgSnapshot, BatchWrite, int, list[uuid.UUID], dict[str, CreditAnswer]]:
        decided: dict[str, CreditAnswer] = {}

        def decide_batch(snapshot: OrgSnapshot) -> BatchWrite:
            if calendar_month(at, snapshot.org.timezone) != month:
                raise _TimezoneMoved(snapshot.org.timezone)
            answers, write = self._decide(snapshot, month, at, batch)
            decided.update(answers)
            return write

        snapshot, write, version, inserted = await self._repository.decide_locked(
            org_id, month.start, users, enquiries, decide_batch)
        return snapshot, write, version, inserted, decided

    def _settle(self, org_id: str, snapshot: OrgSnapshot, month: Period, at: datetime, users: Sequence[str],
                write: BatchWrite, version: int, inserted: Sequence[uuid.UUID], answers: dict[str, CreditAnswer],
                batch: Sequence[_Pending], known: _Known | None) -> list[CreditAnswer]:
        """After the batch's write committed: remember the org's new state, notify, answer."""
        self._known[org_id] = _Known.after(snapshot, month, write, version, users, known)
        new_alerts = set(inserted)
        self._notify([alert for alert in write.alerts if alert.event_id in new_alerts], org_id, at)
        return _per_request(answers, batch)

    def _decide(self, snapshot: OrgSnapshot, month: Period, at: datetime,
                batch: Sequence[_Pending]) -> tuple[dict[str, CreditAnswer], BatchWrite]:
        """Decide the batch in arrival order with the domain's ``decide``, one request at a time.

        Each request is decided on a state holding only its own user's count (the org's counters carried
        from the previous request), so a batch costs O(requests), not O(requests x users).

        # NOTE: an admission adds one to the org's month count, the user's count and, on trial, the
        # trial count: ``OrgQuotaState.with_use``, the same increments the batch's SQL write applies.
        # They are applied to the carried counters here rather than through ``consume``, which would
        # rebuild the state and recompute the calendar month once more per request (half the CPU of a
        # decision); the decision itself is the domain's.
        """
        org = snapshot.org
        base = self._state_of(snapshot, month)
        usage = base.month_usage(at)
        counts = dict(usage.user_used)
        org_used, trial_used = usage.org_used, base.trial_used
        on_trial = base.is_on_trial(at)
        at_text = at.isoformat()
        answers: dict[str, CreditAnswer] = {}
        consumptions: list[NewConsumption] = []
        refused: list[str] = []
        grants: Counter[str] = Counter()
        touched_users: set[str] = set()
        for item in batch:
            if item.enquiry_id in answers:
                continue
            prior = snapshot.prior.get(item.enquiry_id)
            if prior is not None:
                answers[item.enquiry_id] = self._replay(org.org_id, prior)
                continue
            user = item.user_id
            state = replace(base, trial_used=trial_used, usage=MonthlyUsage(
                month=usage.month, org_used=org_used, user_used={user: counts.get(user, 0)},
                top_ups=usage.top_ups))
            decision = decide(state, user, at)
            touched_users.add(user)
            answer = self._answer(org.org_id, item, decision, on_trial)
            answers[item.enquiry_id] = answer
            if decision.allowed:
                org_used += 1
                trial_used += 1 if on_trial else 0
                counts[user] = counts.get(user, 0) + 1
                grants[user] += 1
                consumptions.append(self._consumption(org, answer, at_text))
            else:
                refused.append(item.enquiry_id)
        final = replace(base, trial_used=trial_used, usage=MonthlyUsage(
            month=usage.month, org_used=org_used, user_used={u: counts.get(u, 0) for u in touched_users},
            top_ups=usage.top_ups))
        alerts = self._new_alerts(snapshot, final, month, at, touched_users)
        write = BatchWrite(
            org_id=org.org_id, seen_version=org.version, month_start=month.start, month_end=month.end,
            month_plan_reports=org.plan_monthly_reports, consumed_at=at,
            trial_delta=trial_used - base.trial_used, user_limit=org.per_user_monthly_limit,
            user_grants=dict(grants), consumptions=consumptions, alerts=alerts,
            usage_topic=topics.USAGE, alert_topic=topics.BILLING_EVENTS, message_key=org.message_key,
            refused_enquiries=refused)
        return answers, write

    def _state_of(self, snapshot: OrgSnapshot, month: Period) -> OrgQuotaState:
        org = snapshot.org
        row = snapshot.month
        usage = MonthlyUsage(month=month, org_used=row.used if row else 0, user_used=snapshot.user_used,
                             top_ups=row.top_ups if row else 0)
        return OrgQuotaState(
            plan_monthly_reports=org.plan_monthly_reports, per_user_monthly_limit=org.per_user_monthly_limit,
            trial_started_at=org.trial_started_at, trial_used=org.trial_used, usage=usage,
            timezone=org.timezone, trial=TrialAllowance(org.trial_reports, org.trial_days))

    @staticmethod
    def _answer(org_id: str, item: _Pending, decision: QuotaDecision, on_trial: bool) -> CreditAnswer:
        return CreditAnswer(
            org_id=org_id, enquiry_id=item.enquiry_id, user_id=item.user_id, allowed=decision.allowed,
            reason=decision.reason, month=decision.month, org_allotment=decision.org_allotment,
            org_remaining=decision.org_remaining, user_limit=decision.user_limit,
            user_remaining=decision.user_remaining, on_trial=on_trial)

    @staticmethod
    def _replay(org_id: str, prior: ConsumptionRow) -> CreditAnswer:
        return CreditAnswer(
            org_id=org_id, enquiry_id=prior.enquiry_id, user_id=prior.user_id, allowed=True, reason=None,
            month=Period(prior.month_start, prior.month_end),
            org_allotment=prior.org_allotment, org_remaining=prior.org_remaining, user_limit=prior.user_limit,
            user_remaining=prior.user_remaining, on_trial=prior.on_trial, replayed=True)

    @staticmethod
    def _no_plan_answer(org_id: str, item: _Pending, month: Period) -> CreditAnswer:
        return CreditAnswer(
            org_id=org_id, enquiry_id=item.enquiry_id, user_id=item.user_id, allowed=False,
            reason=QuotaDenialReason.NO_PLAN, month=month, org_allotment=0, org_remaining=0, user_limit=None,
            user_remaining=None, on_trial=False)

    def _consumption(self, org: OrgRow, answer: CreditAnswer, at: str) -> NewConsumption:
        """The admitted report's usage event: a ``usage.recorded`` envelope (``UsageRecorded`` payload).

        Serialised straight to JSON (one ``orjson.dumps``): building the pydantic models per admission
        cost more than the decision. The shape is the contract's, checked by the race tests, which read
        the outbox rows back through ``Envelope`` and ``parse_payload``.
        """
        event_id = _event_id("report", org.org_id, answer.enquiry_id)
        envelope = {
            "event_id": str(event_id), "type": "usage.recorded", "schema_version": 1, "occurred_at": at,
            "producer": PRODUCER, "correlation_id": answer.enquiry_id,
            "payload": {
                "transaction_id": f"report:{answer.enquiry_id}", "customer_id": org.org_id,
                "subscription_id": org.message_key, "event_type": self._report_event_type, "timestamp": at,
                "properties": {"user_id": answer.user_id, "enquiry_id": answer.enquiry_id, "quantity": 1,
                               "on_trial": answer.on_trial},
                "received_at": at,
            },
        }
        return NewConsumption(
            enquiry_id=answer.enquiry_id, user_id=answer.user_id, org_allotment=answer.org_allotment,
            org_remaining=answer.org_remaining, user_limit=answer.user_limit,
            user_remaining=answer.user_remaining, on_trial=answer.on_trial, event_id=event_id,
            envelope_json=orjson.dumps(envelope).decode())

    # --- alerts ---------------------------------------------------------------------------------------

    def _new_alerts(self, snapshot: OrgSnapshot, state: OrgQuotaState, month: Period, at: datetime,
                    users: set[str]) -> list[NewAlert]:
        """Alerts the state left by this batch calls for and that were not sent yet (level-triggered)."""
        org = snapshot.org
        wanted: list[tuple[AlertKey, int, int, str]] = []
        usage = state.month_usage(at)
        if org.plan_monthly_reports is not None:
            allotment = effective_allotment(org.plan_monthly_reports, usage.top_ups)
            used = usage.org_used
            thresholds = org.alert_thresholds or DEFAULT_ALERT_THRESHOLDS_PERCENT
            for threshold in crossed_thresholds(0, used, allotment, thresholds):
                wanted.append((AlertKey(THRESHOLD_REACHED, month.start, threshold), used, allotment,
                               f"{threshold}% of the monthly allotment used"))
            if allotment > 0 and used >= allotment:
                wanted.append((AlertKey(LIMIT_REACHED, month.start), used, allotment,
                               QuotaDenialReason.ORG_LIMIT_REACHED.value))
            if allotment > 0 and _on_track(used, allotment, month, at):
                wanted.append((AlertKey(ON_TRACK_TO_EXCEED, month.start), used, allotment,
                               "on track to hit the monthly limit before the month ends"))
        elif org.trial_started_at is not None and state.trial_used >= state.trial.reports > 0:
            wanted.append((AlertKey(LIMIT_REACHED, org.trial_started_at), state.trial_used,
                           state.trial.reports, QuotaDenialReason.TRIAL_EXHAUSTED.value))
        limit = org.per_user_monthly_limit
        if limit:
            for user_id in sorted(users):
                if usage.used_by(user_id) >= limit:
                    wanted.append((AlertKey(LIMIT_REACHED, month.start, 0, user_id), usage.used_by(user_id),
                                   limit, QuotaDenialReason.USER_LIMIT_REACHED.value))
        return [self._alert(org, key, used, allotment, reason, at)
                for key, used, allotment, reason in wanted if key not in snapshot.alerts_sent]

    @staticmethod
    def _alert(org: OrgRow, key: AlertKey, used: int, allotment: int, reason: str, at: datetime) -> NewAlert:
        event_id = _event_id("alert", org.org_id, key.period_start.isoformat(), key.kind,
                             key.threshold_percent, key.user_id)
        payload = QuotaAlert(org_id=org.org_id, user_id=key.user_id or None, period_start=key.period_start,
                             threshold_percent=key.threshold_percent or None, used=used, allotment=allotment,
                             reason=reason)
        envelope = new_envelope(key.kind, payload.model_dump(mode="json"), producer=PRODUCER, occurred_at=at,
                                event_id=event_id)
        return NewAlert(key, used, allotment, reason, event_id, envelope.model_dump_json())

    def _notify(self, alerts: Sequence[NewAlert], org_id: str, at: datetime) -> None:
        if self._notifier is None or not alerts:
            return
        for alert in alerts:
            who = f" (user {alert.key.user_id})" if alert.key.user_id else ""
            notification = Notification(
                notification_id=alert.event_id, kind=alert.key.kind.replace(".", "_"), customer_id=org_id,
                recipient=None, subject=f"Report quota of {org_id}{who}: {alert.reason}",
                body=f"{alert.used} of {alert.allotment} reports used: {alert.reason}.", occurred_at=at,
                data={"org_id": org_id, "user_id": alert.key.user_id or None, "kind": alert.key.kind,
                      "threshold_percent": alert.key.threshold_percent or None, "used": alert.used,
                      "allotment": alert.allotment, "period_start": alert.key.period_start.isoformat()})
            self._spawn(self._send(notification))

    async def _send(self, notification: Notification) -> None:
        assert self._notifier is not None
        try:
            await self._notifier.send(notification)
        except Exception:
            # NOTE: the outbox event on billing-events.v1 is the durable record; the notification consumer
            # of that topic retries delivery, so a failed direct send is logged, not retried here.
            _log.warning("quota alert notification failed", exc_info=True,
                         extra=kv(notification_id=str(notification.notification_id),
                                  customer_id=notification.customer_id))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- administration ------------------------------------------------------------------------------

    def plan(self, plan: str) -> Plan:
        found = self._plans.get(plan.strip().lower())
        if found is None:
            names = sorted({p.name for p in self._plans.values()})
            raise QuotaRequestError(422, "unknown-plan", f"unknown report plan {plan!r}; one of {names}")
        return found

    async def set_plan(self, org_id: str, plan_name: str, *, timezone: str | None = None,
                       subscription_id: str | None = None) -> QuotaView:
        """Put the org on a monthly report plan, effective at once; the month's used count carries over."""
        plan = self.plan(plan_name)
        assert plan.quota is not None
        tz = await self._timezone_for(org_id, timezone)
        month = calendar_month(await self.now(), tz)
        changes: dict[str, object] = {"plan_id": plan.id, "plan_monthly_reports": plan.quota.limit,
                                      "timezone": tz}
        if subscription_id is not None:
            changes["subscription_id"] = subscription_id
        await self._repository.configure(org_id, changes, create_timezone=tz, month=(month.start, month.end),
                                         month_plan_reports=plan.quota.limit)
        self._known.pop(org_id, None)
        self._timezones[org_id] = tz
        return await self.view(org_id)

    async def start_trial(self, org_id: str, *, timezone: str | None = None) -> QuotaView:
        """Start the org's one trial now (a second call changes nothing); refused for an org on a plan."""
        tz = await self._timezone_for(org_id, timezone)
        try:
            org = await self._repository.org(org_id)
        except UnknownOrg:
            org = None
        if org is not None and org.plan_id is not None:
            raise QuotaRequestError(409, "plan-already-set", "the org is on a plan; a trial is for new orgs")
        if org is None or org.trial_started_at is None:
            await self._repository.configure(
                org_id, {"trial_started_at": await self.now(), "trial_reports": self._trial.reports,
                         "trial_days": self._trial.days, "timezone": tz}, create_timezone=tz)
            self._known.pop(org_id, None)
            self._timezones[org_id] = tz
        return await self.view(org_id)

    async def set_user_limit(self, org_id: str, limit: int | None) -> QuotaView:
        """Each user of the org may run at most ``limit`` reports per month (None: no per-user limit)."""
        if limit is not None and limit < 0:
            raise QuotaRequestError(422, "invalid-limit", "the per-user limit must not be negative")
        await self._require_org(org_id)
        await self._repository.configure(org_id, {"per_user_monthly_limit": limit})
        self._known.pop(org_id, None)
        return await self.view(org_id)

    async def set_alert_thresholds(self, org_id: str, thresholds_percent: Sequence[int]) -> QuotaView:
        """Alert when these percentages of the month's allotment are reached (default 80 and 100)."""
        thresholds = tuple(sorted(set(thresholds_percent)))
        try:
            crossed_thresholds(0, 0, 1, thresholds)  # the domain validates the values
        except (DomainError, TypeError) as error:
            raise QuotaRequestError(422, "invalid-thresholds", str(error)) from error
        if not thresholds or any(t > 100 for t in thresholds):
            raise QuotaRequestError(422, "invalid-thresholds", "give 1 to 100 percent, at least one")
        await self._require_org(org_id)
        await self._repository.configure(org_id, {"alert_thresholds": list(thresholds)})
        self._known.pop(org_id, None)
        return await self.view(org_id)

    async def top_up(self, org_id: str, reports: int, *, top_up_id: str | None, granted_by: str
                     ) -> tuple[QuotaView, bool, datetime]:
        """Add ``reports`` for the current month only: (state, applied now, expiry = the month's end)."""
        org = await self._require_org(org_id)
        at = await self.now()
        month = calendar_month(at, org.timezone)
        try:
            OrgQuotaState(plan_monthly_reports=org.plan_monthly_reports,
                          timezone=org.timezone).with_top_up(reports, at)
        except (DomainError, TypeError) as error:
            raise QuotaRequestError(422, "invalid-top-up", str(error)) from error
        self._known.pop(org_id, None)
        applied, _total = await self._repository.top_up(
            org_id, top_up_id or f"topup_{uuid.uuid4().hex}", reports, (month.start, month.end), granted_by, at)
        return await self.view(org_id), applied, month.end

    async def view(self, org_id: str, user_id: str | None = None) -> QuotaView:
        org = await self._require_org(org_id)
        at = await self.now()
        month = calendar_month(at, org.timezone)
        snapshot = await self._repository.load(org_id, month.start, [user_id] if user_id else [], [])
        state = self._state_of(snapshot, month)
        usage = state.month_usage(at)
        org = snapshot.org
        if org.plan_monthly_reports is not None:
            allotment = effective_allotment(org.plan_monthly_reports, usage.top_ups)
            used = usage.org_used
        else:
            allotment, used = (state.trial.reports, state.trial_used) if state.is_on_trial(at) else (0, 0)
        trial_end = state.trial.window(org.trial_started_at, org.timezone).end if org.trial_started_at else None
        user_used = usage.used_by(user_id) if user_id else None
        user_remaining = None
        if user_id and org.per_user_monthly_limit is not None:
            user_remaining = remaining(org.per_user_monthly_limit, usage.used_by(user_id))
        plan = self._plans.get(org.plan_id.lower()) if org.plan_id else None
        return QuotaView(
            org_id=org_id, plan_id=org.plan_id, plan_name=plan.name if plan else None,
            plan_monthly_reports=org.plan_monthly_reports, timezone=org.timezone, month=month,
            top_ups=usage.top_ups, allotment=allotment, used=used, remaining=remaining(allotment, used),
            per_user_monthly_limit=org.per_user_monthly_limit, alert_thresholds_percent=org.alert_thresholds,
            on_trial=state.is_on_trial(at), trial_started_at=org.trial_started_at, trial_ends_at=trial_end,
            trial_reports=org.trial_reports, trial_used=org.trial_used, user_id=user_id, user_used=user_used,
            user_remaining=user_remaining)

    async def _require_org(self, org_id: str) -> OrgRow:
        try:
            return await self._repository.org(org_id)
        except UnknownOrg:
            raise QuotaRequestError(404, "unknown-org", f"org {org_id!r} has no report plan or trial") from None

    async def _timezone_for(self, org_id: str, requested: str | None) -> str:
        if requested is not None:
            try:
                zone(requested)
            except (DomainError, ValueError) as error:
                raise QuotaRequestError(422, "invalid-timezone", str(error)) from error
            return requested
        try:
            return (await self._repository.org(org_id)).timezone
        except UnknownOrg:
            return "UTC"

    async def aclose(self) -> None:
        for task in list(self._background):
            task.cancel()


def _per_request(answers: dict[str, CreditAnswer], batch: Sequence[_Pending]) -> list[CreditAnswer]:
    """One answer per request; a second request for an enquiry in the same batch is a replay of the first."""
    seen: set[str] = set()
    results = []
    for item in batch:
        answer = answers[item.enquiry_id]
        if item.enquiry_id in seen and answer.allowed:
            answer = replace(answer, replayed=True)
        seen.add(item.enquiry_id)
        results.append(answer)
    return results


def _on_track(used: int, allotment: int, month: Period, at: datetime) -> bool:
    """The domain's forecast verdict (a projection beyond year 9999 is reported as not on track)."""
    return forecast_limit(used, allotment, month, at).on_track_to_hit_limit

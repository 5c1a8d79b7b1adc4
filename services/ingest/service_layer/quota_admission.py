"""Use a report credit: the decision use case of the report quota (the edge's synchronous, strongly
consistent part).

1. Requests for one org that arrive while a decision for that org is in flight are decided together as one
   *batch* (``Lanes``, up to ``MAX_BATCH``), so a hot org costs one write per batch instead of one per request.
2. ``decide_credits`` decides the batch on the org's state: an enquiry admitted before gets its stored
   answer back (replayed), a second request for an enquiry in the batch shares its decision, and the rest
   are decided in arrival order by the domain (``shared.domain.quota.decide_in_order``: the rules and the
   counter increments live only there). It returns the answers and the ``BatchWrite``: counters, one row and
   one ``usage.recorded`` event per admission (in one outbox bundle), new alerts (``quota_alerts``).
3. ``BatchCommitter`` (``quota_commit``) makes it stick: remembered state, one compare-and-set statement,
   re-decided on a fresh read when the org moved; CHECK constraints are the backstop.
4. Denials are not stored: a denied enquiry may be retried after a top-up. The month is the calendar month
   of the billing clock's "now" in the org's zone, computed per batch: the first request after midnight on
   the 1st reads (and creates) the new month's counters. No job.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

import orjson

from services.ingest.service_layer.quota_alerts import AlertNotifications, event_id, new_alerts
from services.ingest.service_layer.quota_commit import BatchCommitter, EventLoopClock, OrgNotConfigured
from services.ingest.service_layer.quota_errors import QuotaRefusalCode, QuotaRefused
from services.ingest.service_layer.quota_lanes import Lanes
from shared.adapters.postgres.quota_store import BatchWrite, ConsumptionRow, NewConsumption, OrgRow, OrgSnapshot
from shared.contracts import topics
from shared.domain.calendar import Period, iso_instant
from shared.domain.quota import (
    MonthlyUsage,
    OrgQuotaState,
    QuotaDecision,
    QuotaDenialReason,
    TrialAllowance,
    decide_in_order,
)

PRODUCER = "ingest"
MAX_BATCH = 256


@dataclass(frozen=True, slots=True)
class CreditRequest:
    user_id: str
    enquiry_id: str


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
            "month_start": iso_instant(self.month.start), "month_end": iso_instant(self.month.end),
            "org_allotment": self.org_allotment, "org_remaining": self.org_remaining,
            "user_limit": self.user_limit, "user_remaining": self.user_remaining, "on_trial": self.on_trial,
        }


def quota_state_of(snapshot: OrgSnapshot, month: Period) -> OrgQuotaState:
    """The domain's view of the rows of one org read for ``month``."""
    org = snapshot.org
    row = snapshot.month
    usage = MonthlyUsage(month=month, org_used=row.used if row else 0, user_used=snapshot.user_used,
                         top_ups=row.top_ups if row else 0)
    return OrgQuotaState(
        plan_monthly_reports=org.plan_monthly_reports, per_user_monthly_limit=org.per_user_monthly_limit,
        trial_started_at=org.trial_started_at, trial_used=org.trial_used, usage=usage,
        timezone=org.timezone, trial=TrialAllowance(org.trial_reports, org.trial_days))


def decide_credits(snapshot: OrgSnapshot, month: Period, at: datetime, batch: Sequence[CreditRequest],
                   report_event_type: str) -> tuple[dict[str, CreditAnswer], BatchWrite]:
    """Decide a batch of one org on ``snapshot`` (pure): the answer per enquiry id, and what to write."""
    org = snapshot.org
    base = quota_state_of(snapshot, month)
    # NOTE: reports in other processes' leases are spoken for: this path decides on used + leased (the
    # CHECK holds used + leased to the allotment), and a refusal for want of them revokes the leases and is
    # decided again (``QuotaAdmission._admit``), so credits sitting in a lease never cause a refusal.
    leased = snapshot.month.leased if snapshot.month is not None else 0
    deciding = base if not leased or base.usage is None else replace(
        base, usage=replace(base.usage, org_used=base.usage.org_used + leased))
    answers: dict[str, CreditAnswer] = {}
    to_decide: list[CreditRequest] = []
    seen: set[str] = set()
    for item in batch:
        if item.enquiry_id in seen:
            continue  # a second request for the enquiry shares the first one's answer (per_request)
        seen.add(item.enquiry_id)
        prior = snapshot.prior.get(item.enquiry_id)
        if prior is not None:
            answers[item.enquiry_id] = _replay(org.org_id, prior)
        else:
            to_decide.append(item)
    decided = decide_in_order(deciding, [item.user_id for item in to_decide], at)
    on_trial = base.is_on_trial(at)
    at_text = at.isoformat()
    consumptions: list[NewConsumption] = []
    refused: list[str] = []
    grants: dict[str, int] = {}
    for item, decision in zip(to_decide, decided.decisions, strict=True):
        answer = _answer(org.org_id, item, decision, on_trial)
        answers[item.enquiry_id] = answer
        if decision.allowed:
            grants[item.user_id] = grants.get(item.user_id, 0) + 1
            consumptions.append(_consumption(org, answer, at_text, report_event_type))
        else:
            refused.append(item.enquiry_id)
    after = decided.state
    if leased and after.usage is not None:
        after = replace(after, usage=replace(after.usage, org_used=after.usage.org_used - leased))
    alerts = new_alerts(snapshot, after, at, {item.user_id for item in to_decide})
    write = BatchWrite(
        org_id=org.org_id, seen_version=org.version, month_start=month.start, month_end=month.end,
        month_plan_reports=org.plan_monthly_reports, consumed_at=at,
        trial_delta=decided.state.trial_used - base.trial_used, user_limit=org.per_user_monthly_limit,
        user_grants=grants, consumptions=consumptions, alerts=alerts,
        usage_topic=topics.USAGE, alert_topic=topics.BILLING_EVENTS, message_key=org.message_key,
        refused_enquiries=refused, month_top_ups=snapshot.month.top_ups if snapshot.month else 0)
    return answers, write


def no_plan_answers(org_id: str, batch: Sequence[CreditRequest], month: Period) -> list[CreditAnswer]:
    """The answers for an org that has neither a plan nor a trial."""
    return [CreditAnswer(
        org_id=org_id, enquiry_id=item.enquiry_id, user_id=item.user_id, allowed=False,
        reason=QuotaDenialReason.NO_PLAN, month=month, org_allotment=0, org_remaining=0, user_limit=None,
        user_remaining=None, on_trial=False) for item in batch]


def per_request(answers: dict[str, CreditAnswer], batch: Sequence[CreditRequest]) -> list[CreditAnswer]:
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


class LeasePath(Protocol):
    """Admissions decided from memory under leases (``quota_leases.LeasedCredits``)."""

    async def try_admit(self, org_id: str, user_id: str, enquiry_id: str) -> CreditAnswer | None: ...

    async def aclose(self) -> None: ...


class QuotaAdmission:
    """``use_credit``: admit or refuse one report (see the module docstring).

    With ``leases``, a request is first offered to the lease path, which admits it from memory (committed
    by the pipelined group commit) or declines; declined requests are decided here, exactly. Before this
    path refuses for want of reports while some sit in leases, it has them revoked (``revoke_leases``) and
    decides those requests again: credits in a lease never cause a refusal.
    """

    def __init__(self, committer: BatchCommitter, clock: EventLoopClock, alerts: AlertNotifications,
                 report_event_type: str, observe_batch_size: Callable[[int], None] | None = None, *,
                 revoke_leases: Callable[[str], Awaitable[int]] | None = None) -> None:
        self._committer = committer
        self._clock = clock
        self._alerts = alerts
        self._report_event_type = report_event_type
        self._revoke_leases = revoke_leases
        self.leases: LeasePath | None = None
        self._lanes: Lanes[CreditRequest, CreditAnswer] = Lanes(self._admit, max_batch=MAX_BATCH,
                                                                observe_batch_size=observe_batch_size)

    @property
    def committer(self) -> BatchCommitter:
        return self._committer

    @property
    def clock(self) -> EventLoopClock:
        return self._clock

    @property
    def alerts(self) -> AlertNotifications:
        return self._alerts

    async def now(self) -> datetime:
        return await self._clock.now()

    async def use_credit(self, org_id: str, user_id: str, enquiry_id: str) -> CreditAnswer:
        """Admit or refuse one report; an enquiry id admitted before gets the original answer back, and
        ``enquiry_conflict`` when that enquiry was run by another user."""
        leased = await self.leases.try_admit(org_id, user_id, enquiry_id) if self.leases is not None else None
        answer = leased or await self._lanes.submit(org_id, CreditRequest(user_id, enquiry_id))
        if answer.user_id != user_id:
            raise QuotaRefused(QuotaRefusalCode.ENQUIRY_CONFLICT, f"enquiry {enquiry_id!r} was run by another user",
                               field="enquiry_id")
        return answer

    async def _admit(self, org_id: str, batch: Sequence[CreditRequest]) -> list[CreditAnswer]:
        answers, leased = await self._admit_once(org_id, batch)
        refused = [item for item, answer in zip(batch, answers, strict=True)
                   if answer.reason is QuotaDenialReason.ORG_LIMIT_REACHED]
        if refused and leased and self._revoke_leases is not None:
            # NOTE: the refusal was for want of reports some of which sit in leases: end them (their holders'
            # next writes are fenced and decided here) and decide the refused requests again
            await self._revoke_leases(org_id)
            self._committer.forget(org_id)
            again = iter((await self._admit_once(org_id, refused))[0])
            answers = [next(again) if answer.reason is QuotaDenialReason.ORG_LIMIT_REACHED else answer
                       for answer in answers]
        return answers

    async def _admit_once(self, org_id: str, batch: Sequence[CreditRequest]) -> tuple[list[CreditAnswer], bool]:
        """The batch's answers, and whether reports of the org's month sat in leases when it was decided."""
        users = sorted({item.user_id for item in batch})
        enquiries = sorted({item.enquiry_id for item in batch})
        event_type = self._report_event_type

        def decide(snapshot: OrgSnapshot, month: Period, at: datetime) -> tuple[dict[str, CreditAnswer], BatchWrite]:
            return decide_credits(snapshot, month, at, batch, event_type)

        try:
            committed = await self._committer.commit(org_id, users, enquiries, decide)
        except OrgNotConfigured as unknown:
            return no_plan_answers(org_id, batch, unknown.month), False
        self._alerts.send(committed.write.alerts, committed.inserted_alerts, org_id, committed.at)
        month = committed.snapshot.month
        return per_request(committed.answers, batch), month is not None and month.leased > 0

    async def aclose(self) -> None:
        if self.leases is not None:
            await self.leases.aclose()
        await self._lanes.aclose()
        await self._alerts.aclose()


def _answer(org_id: str, item: CreditRequest, decision: QuotaDecision, on_trial: bool) -> CreditAnswer:
    return CreditAnswer(
        org_id=org_id, enquiry_id=item.enquiry_id, user_id=item.user_id, allowed=decision.allowed,
        reason=decision.reason, month=decision.month, org_allotment=decision.org_allotment,
        org_remaining=decision.org_remaining, user_limit=decision.user_limit,
        user_remaining=decision.user_remaining, on_trial=on_trial)


def _replay(org_id: str, prior: ConsumptionRow) -> CreditAnswer:
    return CreditAnswer(
        org_id=org_id, enquiry_id=prior.enquiry_id, user_id=prior.user_id, allowed=True, reason=None,
        month=Period(prior.month_start, prior.month_end),
        org_allotment=prior.org_allotment, org_remaining=prior.org_remaining, user_limit=prior.user_limit,
        user_remaining=prior.user_remaining, on_trial=prior.on_trial, replayed=True)


def _consumption(org: OrgRow, answer: CreditAnswer, at: str, report_event_type: str) -> NewConsumption:
    """The admitted report's usage event: a ``usage.recorded`` envelope (``UsageRecorded`` payload).

    Serialised straight to JSON (one ``orjson.dumps``): building the pydantic models per admission cost
    more than the decision. The shape is the contract's, checked by the race tests, which read the outbox
    rows back through ``Envelope`` and ``parse_payload``.
    """
    usage_event_id = event_id("report", org.org_id, answer.enquiry_id)
    envelope = {
        "event_id": str(usage_event_id), "type": "usage.recorded", "schema_version": 1, "occurred_at": at,
        "producer": PRODUCER, "correlation_id": answer.enquiry_id,
        "payload": {
            "transaction_id": f"report:{answer.enquiry_id}", "customer_id": org.org_id,
            "subscription_id": org.message_key, "event_type": report_event_type, "timestamp": at,
            "properties": {"user_id": answer.user_id, "enquiry_id": answer.enquiry_id, "quantity": 1,
                           "on_trial": answer.on_trial},
            "received_at": at,
        },
    }
    return NewConsumption(
        enquiry_id=answer.enquiry_id, user_id=answer.user_id, org_allotment=answer.org_allotment,
        org_remaining=answer.org_remaining, user_limit=answer.user_limit,
        user_remaining=answer.user_remaining, on_trial=answer.on_trial, event_id=usage_event_id,
        envelope_json=orjson.dumps(envelope).decode())

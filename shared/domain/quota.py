"""Report quota policy: may this org (and this user) run one more report now?

Contract:
- An org on a plan may run ``plan_monthly_reports + top-ups of the month`` reports per calendar month
  (in the org's time zone); each user of the org at most ``per_user_monthly_limit`` per month when a
  limit is set. An org without a plan may run ``TrialAllowance.reports`` reports within
  ``TrialAllowance.days`` of its trial start, then nothing until a plan is set.
- Counters are kept per calendar month (``MonthlyUsage``). A new month starts at zero without any job
  having to run: counters whose month does not contain the instant asked about are simply not used.
- This module is authoritative for the *rule*; PostgreSQL is authoritative for *concurrency*. The edge
  turns a decision into one atomic conditional write (``... SET used = used + 1 WHERE used < allotment``)
  using the numbers exposed here (``QuotaDecision.org_allotment``, ``effective_allotment``,
  ``QuotaDecision.user_limit``), so two concurrent requests can never both take the last report even
  though each of them, evaluated here alone, would be allowed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from types import MappingProxyType
from typing import Final

from shared.domain.calendar import Period, calendar_month, ensure_utc, trial_window
from shared.domain.errors import InvalidValueError

#: Alert thresholds, in percent of the month's effective allotment, when an org configures none.
DEFAULT_ALERT_THRESHOLDS_PERCENT: Final[tuple[int, ...]] = (80, 100)

_ONE_MICROSECOND: Final = timedelta(microseconds=1)


def _require_count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if value < 0:
        raise InvalidValueError(f"{what} must not be negative, got {value}")
    return value


class QuotaDenialReason(StrEnum):
    """Why a report was refused; the edge puts this value in its 4xx body."""

    ORG_LIMIT_REACHED = "org_limit_reached"
    USER_LIMIT_REACHED = "user_limit_reached"
    TRIAL_EXHAUSTED = "trial_exhausted"
    TRIAL_EXPIRED = "trial_expired"
    NO_PLAN = "no_plan"


@dataclass(frozen=True, slots=True)
class TrialAllowance:
    """What an org without a plan may run: ``reports`` within ``days`` of its trial start."""

    reports: int = 10
    days: int = 14

    def __post_init__(self) -> None:
        _require_count(self.reports, "trial reports")
        if _require_count(self.days, "trial days") == 0:
            raise InvalidValueError("a trial must last at least one day")

    def window(self, started_at: datetime, tz: str = "UTC") -> Period:
        """The trial's half-open window, in calendar days of the org's zone."""
        return trial_window(started_at, self.days, tz)


def effective_allotment(plan_allotment: int, top_ups: int) -> int:
    """Reports an org on a plan may run this month: the plan's monthly allotment plus the month's top-ups."""
    return _require_count(plan_allotment, "plan allotment") + _require_count(top_ups, "top-ups")


def remaining(allotment: int, used: int) -> int:
    """What is left of ``allotment`` after ``used``; never negative (a downgrade may leave more used)."""
    return max(0, _require_count(allotment, "allotment") - _require_count(used, "used"))


@dataclass(frozen=True, slots=True)
class MonthlyUsage:
    """One org's counters for one calendar month: the row the edge keys by (org, month start).

    ``user_used`` holds the month's count per user id; a user absent from it has used nothing (the
    edge may load only the requesting user's count). ``top_ups`` is the sum of the month's top-ups,
    which expire with the month.
    """

    month: Period
    org_used: int = 0
    user_used: Mapping[str, int] = field(default_factory=dict)
    top_ups: int = 0

    def __post_init__(self) -> None:
        _require_count(self.org_used, "org used")
        _require_count(self.top_ups, "top-ups")
        for user_id, count in self.user_used.items():
            _require_count(count, f"used count of user {user_id!r}")
        object.__setattr__(self, "user_used", MappingProxyType(dict(self.user_used)))

    def used_by(self, user_id: str) -> int:
        return self.user_used.get(user_id, 0)

    def with_use(self, user_id: str) -> MonthlyUsage:
        counts = dict(self.user_used)
        counts[user_id] = counts.get(user_id, 0) + 1
        return replace(self, org_used=self.org_used + 1, user_used=counts)


@dataclass(frozen=True, slots=True)
class OrgQuotaState:
    """Everything the quota rule needs to know about one org at one instant.

    ``plan_monthly_reports`` is the plan's allotment as a plain count (taken from the catalog by the
    caller), ``None`` when the org has no plan. ``usage`` is the latest month's counters; counters of an
    earlier month are ignored by every rule (the month rolled over). ``trial_used`` counts reports run
    during the trial window, which may span two calendar months.

    # NOTE: a plan change mid-month takes effect at once and only changes the allotment: the month's
    # used count stays. An upgrade from Basic (100) to Enterprise (500) with 90 used leaves 410; a
    # downgrade to Lite (20) with 90 used leaves 0 until the next month. Reports run during the trial
    # count in the month's used count too: there is one counter per org and month, whatever the plan.
    """

    plan_monthly_reports: int | None
    per_user_monthly_limit: int | None = None
    trial_started_at: datetime | None = None
    trial_used: int = 0
    usage: MonthlyUsage | None = None
    timezone: str = "UTC"
    trial: TrialAllowance = field(default_factory=TrialAllowance)

    def __post_init__(self) -> None:
        if self.plan_monthly_reports is not None:
            _require_count(self.plan_monthly_reports, "plan monthly reports")
        if self.per_user_monthly_limit is not None:
            _require_count(self.per_user_monthly_limit, "per-user monthly limit")
        if self.trial_started_at is not None:
            object.__setattr__(self, "trial_started_at", ensure_utc(self.trial_started_at, "trial start"))
        _require_count(self.trial_used, "trial used")

    def month_usage(self, at: datetime) -> MonthlyUsage:
        """The counters of the calendar month containing ``at``: fresh zeros once the month has turned."""
        month = calendar_month(at, self.timezone)
        if self.usage is not None and self.usage.month == month:
            return self.usage
        return MonthlyUsage(month=month)

    def is_on_trial(self, at: datetime) -> bool:
        """True while the org has no plan and ``at`` lies inside its trial window."""
        if self.plan_monthly_reports is not None or self.trial_started_at is None:
            return False
        return self.trial.window(self.trial_started_at, self.timezone).contains(at)

    def with_plan(self, plan_monthly_reports: int | None) -> OrgQuotaState:
        """The state after a plan change; effective at once, the month's used count is kept."""
        return replace(self, plan_monthly_reports=plan_monthly_reports)

    def with_top_up(self, reports: int, at: datetime) -> OrgQuotaState:
        """The state after a top-up of ``reports`` for the month containing ``at``.

        # NOTE: top-ups extend a plan's monthly allotment only. An org without a plan keeps them on its
        # month's counters, but they do not lift the trial allowance: after the trial an org is refused
        # until a plan is set, whatever was topped up.
        """
        if _require_count(reports, "top-up reports") == 0:
            raise InvalidValueError("a top-up must add at least one report")
        month = self.month_usage(at)
        return replace(self, usage=replace(month, top_ups=month.top_ups + reports))

    def with_use(self, user_id: str, at: datetime) -> OrgQuotaState:
        """The state after one report by ``user_id`` at ``at`` (whether it was allowed is not checked)."""
        tally = _Tally.of(self, at)
        tally.add_use(user_id)
        return tally.state(self, tally.user_used)


@dataclass(frozen=True, slots=True)
class QuotaDecision:
    """The answer for one report request, with the numbers the edge returns and writes.

    ``org_allotment`` / ``org_used`` are the cap and the count *before* this request that the atomic
    write compares (for a trial org: the trial allowance and the trial's count). ``org_remaining`` and
    ``user_remaining`` are what is left *after* the decision took effect (unchanged when denied);
    ``user_remaining`` is ``None`` when the org sets no per-user limit.
    """

    allowed: bool
    reason: QuotaDenialReason | None
    month: Period
    org_allotment: int
    org_used: int
    user_limit: int | None
    user_used: int

    @property
    def org_remaining(self) -> int:
        return remaining(self.org_allotment, self.org_used + (1 if self.allowed else 0))

    @property
    def user_remaining(self) -> int | None:
        if self.user_limit is None:
            return None
        return remaining(self.user_limit, self.user_used + (1 if self.allowed else 0))


def decide(state: OrgQuotaState, user_id: str, at: datetime) -> QuotaDecision:
    """May ``user_id`` of this org run one report at ``at``?

    Checks, in order: a plan or a live trial (``no_plan``, ``trial_expired``, ``trial_exhausted``), the
    org's allotment (``org_limit_reached``), then the user's monthly limit (``user_limit_reached``).
    The first failing check names the reason.
    """
    instant = ensure_utc(at)
    month = state.month_usage(instant)
    return _check(state, month.month, month.org_used, month.top_ups, state.trial_used, month.used_by(user_id),
                  instant)


def decide_on_count(state: OrgQuotaState, user_id: str, at: datetime, org_used: int) -> QuotaDecision:
    """``decide`` with the month's org count given apart from ``state``: ``org_used`` replaces the count of
    the month containing ``at`` (its top-ups and user counts are the state's, or zeros once that month has
    turned).

    For a caller that counts admissions as it makes them (an edge process deciding from memory under a
    lease): building a new state per request only to carry the count cost more than the decision.
    """
    instant = ensure_utc(at)
    usage = state.month_usage(instant)
    return _check(state, usage.month, org_used, usage.top_ups, state.trial_used, usage.used_by(user_id), instant)


def _check(state: OrgQuotaState, month: Period, org_used: int, top_ups: int, trial_used: int, user_used: int,
           instant: datetime) -> QuotaDecision:
    """``decide`` on counters given apart from ``state`` (a batch carries them from request to request)."""
    user_limit = state.per_user_monthly_limit

    def answer(reason: QuotaDenialReason | None, allotment: int, used: int) -> QuotaDecision:
        return QuotaDecision(
            allowed=reason is None,
            reason=reason,
            month=month,
            org_allotment=allotment,
            org_used=used,
            user_limit=user_limit,
            user_used=user_used,
        )

    if state.plan_monthly_reports is not None:
        allotment = effective_allotment(state.plan_monthly_reports, top_ups)
        used = org_used
        if used >= allotment:
            return answer(QuotaDenialReason.ORG_LIMIT_REACHED, allotment, used)
    else:
        allotment = state.trial.reports
        used = trial_used
        if state.trial_started_at is None:
            return answer(QuotaDenialReason.NO_PLAN, 0, org_used)
        window = state.trial.window(state.trial_started_at, state.timezone)
        # NOTE: a request before the recorded trial start is treated like one after it: the trial
        # window is the only time an org without a plan may run anything.
        if not window.contains(instant):
            return answer(QuotaDenialReason.TRIAL_EXPIRED, allotment, used)
        if used >= allotment:
            return answer(QuotaDenialReason.TRIAL_EXHAUSTED, allotment, used)

    if user_limit is not None and user_used >= user_limit:
        return answer(QuotaDenialReason.USER_LIMIT_REACHED, allotment, used)
    return answer(None, allotment, used)


@dataclass(slots=True)
class _Tally:
    """The counters one admission moves, carried from request to request of a batch.

    ``add_use`` is the only place the increments are written: the org's month count and the user's count
    go up by one, and the trial's count too while the org is on trial.
    """

    month: Period
    org_used: int
    top_ups: int
    trial_used: int
    user_used: dict[str, int]
    on_trial: bool

    @classmethod
    def of(cls, state: OrgQuotaState, at: datetime) -> _Tally:
        usage = state.month_usage(at)
        return cls(usage.month, usage.org_used, usage.top_ups, state.trial_used, dict(usage.user_used),
                   state.is_on_trial(at))

    def add_use(self, user_id: str) -> None:
        self.org_used += 1
        self.user_used[user_id] = self.user_used.get(user_id, 0) + 1
        if self.on_trial:
            self.trial_used += 1

    def state(self, before: OrgQuotaState, user_used: Mapping[str, int]) -> OrgQuotaState:
        return replace(before, trial_used=self.trial_used, usage=MonthlyUsage(
            month=self.month, org_used=self.org_used, user_used=user_used, top_ups=self.top_ups))


@dataclass(frozen=True, slots=True)
class BatchDecision:
    """The decisions of requests decided in arrival order, and the state the admitted ones leave.

    ``state.usage.user_used`` holds the users of the batch only (the counts the alerts look at).
    """

    decisions: tuple[QuotaDecision, ...]
    state: OrgQuotaState

    @property
    def admitted(self) -> int:
        return sum(1 for decision in self.decisions if decision.allowed)


def decide_in_order(state: OrgQuotaState, user_ids: Sequence[str], at: datetime) -> BatchDecision:
    """``consume`` for each of ``user_ids`` in turn, each decided on the counters the previous one left.

    The month, the trial verdict and the counters are worked out once for the batch, not once per
    request: this is the edge's hot path (one call per batch of report-credit requests of one org).
    """
    instant = ensure_utc(at)
    tally = _Tally.of(state, instant)
    decisions: list[QuotaDecision] = []
    for user_id in user_ids:
        decision = _check(state, tally.month, tally.org_used, tally.top_ups, tally.trial_used,
                          tally.user_used.get(user_id, 0), instant)
        decisions.append(decision)
        if decision.allowed:
            tally.add_use(user_id)
    users = {user_id: tally.user_used.get(user_id, 0) for user_id in user_ids}
    return BatchDecision(tuple(decisions), tally.state(state, users))


def consume(state: OrgQuotaState, user_id: str, at: datetime) -> tuple[QuotaDecision, OrgQuotaState]:
    """Decide, and apply the use when allowed: the single-threaded reference of the edge's atomic write."""
    decision = decide(state, user_id, at)
    return decision, (state.with_use(user_id, at) if decision.allowed else state)


# --- alerts ----------------------------------------------------------------------------------------


def crossed_thresholds(
    used_before: int,
    used_after: int,
    allotment: int,
    thresholds_percent: tuple[int, ...] = DEFAULT_ALERT_THRESHOLDS_PERCENT,
) -> tuple[int, ...]:
    """Thresholds (percent of ``allotment``) that going from ``used_before`` to ``used_after`` crosses.

    A threshold ``t`` is crossed when ``used_before < t% of allotment <= used_after``, so 80 % of 100 is
    crossed by the 80th report and by no other. With top-ups the allotment is the effective one, so a
    top-up can re-arm a threshold; the adapter keeps alerts once per (org, month, threshold).
    """
    _require_count(used_before, "used before")
    _require_count(used_after, "used after")
    if _require_count(allotment, "allotment") == 0:
        return ()
    crossed: list[int] = []
    for threshold in sorted(set(thresholds_percent)):
        if _require_count(threshold, "threshold percent") == 0:
            raise InvalidValueError("a 0 % threshold would fire before any use")
        if used_before * 100 < threshold * allotment <= used_after * 100:
            crossed.append(threshold)
    return tuple(crossed)


# --- forecast --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ForecastRule:
    """When a projection is worth trusting: only after ``min_reports`` and ``min_share_percent`` of the
    allotment have been used, so one report in the first hour of the month does not raise an alarm."""

    min_share_percent: int = 10
    min_reports: int = 5

    def __post_init__(self) -> None:
        if _require_count(self.min_share_percent, "minimum share percent") > 100:
            raise InvalidValueError(f"minimum share must be at most 100 %, got {self.min_share_percent}")
        _require_count(self.min_reports, "minimum reports")


_DEFAULT_FORECAST_RULE = ForecastRule()


@dataclass(frozen=True, slots=True)
class LimitForecast:
    """``projected_exhaustion_at`` is when the month-to-date rate reaches the allotment (``None`` when
    nothing has been used, or when that instant lies beyond year 9999); ``on_track_to_hit_limit`` is the
    alert-worthy verdict."""

    on_track_to_hit_limit: bool
    projected_exhaustion_at: datetime | None


@lru_cache(maxsize=4096)
def _latest_offset_microseconds(start: datetime) -> int:
    """Microseconds from ``start`` to the last instant ``datetime`` can represent."""
    return (datetime.max.replace(tzinfo=UTC) - start) // _ONE_MICROSECOND


def forecast_limit(
    used: int,
    allotment: int,
    month: Period,
    at: datetime,
    rule: ForecastRule | None = None,
) -> LimitForecast:
    """Project month-to-date use linearly over the elapsed share of ``month``.

    The org is on track to hit its limit when the projection reaches the allotment by the month's end
    (``used / elapsed >= allotment / month length``), it has not hit the limit yet, and the rule's
    minimum use is met. Exact integer arithmetic on microseconds; no float.
    """
    rule = rule or _DEFAULT_FORECAST_RULE
    _require_count(used, "used")
    _require_count(allotment, "allotment")
    instant = ensure_utc(at)
    if not month.contains(instant):
        raise InvalidValueError(f"{instant.isoformat()} is not inside the month {month}")
    if used == 0:
        return LimitForecast(on_track_to_hit_limit=False, projected_exhaustion_at=None)
    elapsed = (instant - month.start) // _ONE_MICROSECOND
    length = (month.end - month.start) // _ONE_MICROSECOND
    # ceil(elapsed * allotment / used) microseconds after the month's start
    offset = -(-elapsed * allotment // used)
    # NOTE: a huge allotment against a handful of uses projects exhaustion past the last representable
    # instant (year 9999); that is "never" for any caller, so it is reported as None, not an overflow.
    exhaustion_at = (
        month.start + timedelta(microseconds=offset) if offset <= _latest_offset_microseconds(month.start) else None
    )
    enough_use = used >= rule.min_reports and used * 100 >= rule.min_share_percent * allotment
    on_track = enough_use and used < allotment and elapsed * allotment <= used * length
    return LimitForecast(on_track_to_hit_limit=on_track, projected_exhaustion_at=exhaustion_at)


# --- which alerts a state calls for ------------------------------------------------------------------


class QuotaAlertKind(StrEnum):
    """The kinds of quota alert; each value is also the event type of the alert on billing-events.v1."""

    THRESHOLD_REACHED = "quota.threshold_reached"
    LIMIT_REACHED = "quota.limit_reached"
    ON_TRACK_TO_EXCEED = "quota.on_track_to_exceed"


@dataclass(frozen=True, slots=True)
class AlertDue:
    """One alert a state calls for. (kind, period_start, threshold_percent, user_id) names it: it is sent
    once per name (``threshold_percent`` 0 and ``user_id`` "" when the kind has none)."""

    kind: QuotaAlertKind
    period_start: datetime
    used: int
    allotment: int
    reason: str
    threshold_percent: int = 0
    user_id: str = ""


def alerts_due(state: OrgQuotaState, at: datetime, users: Iterable[str],
               thresholds_percent: tuple[int, ...] = (), *, org_used: int | None = None) -> list[AlertDue]:
    """Every alert the state calls for at ``at`` (level-triggered: the caller drops those already sent).
    ``org_used``, when given, is the month's org count kept apart from ``state`` (as for ``decide_on_count``).

    An org on a plan: each threshold (percent of the month's allotment; ``DEFAULT_ALERT_THRESHOLDS_PERCENT``
    when none is configured) reached, the allotment used up, and on track to use it up before the month
    ends (``forecast_limit``). An org on trial: its trial reports used up (keyed by the trial's start).
    With a per-user limit, each of ``users`` that reached it.
    """
    wanted: list[AlertDue] = []
    usage = state.month_usage(at)
    month = usage.month
    if state.plan_monthly_reports is not None:
        allotment = effective_allotment(state.plan_monthly_reports, usage.top_ups)
        used = usage.org_used if org_used is None else org_used
        for threshold in crossed_thresholds(0, used, allotment, thresholds_percent or DEFAULT_ALERT_THRESHOLDS_PERCENT):
            wanted.append(AlertDue(QuotaAlertKind.THRESHOLD_REACHED, month.start, used, allotment,
                                   f"{threshold}% of the monthly allotment used", threshold_percent=threshold))
        if allotment > 0 and used >= allotment:
            wanted.append(AlertDue(QuotaAlertKind.LIMIT_REACHED, month.start, used, allotment,
                                   QuotaDenialReason.ORG_LIMIT_REACHED.value))
        if allotment > 0 and forecast_limit(used, allotment, month, at).on_track_to_hit_limit:
            wanted.append(AlertDue(QuotaAlertKind.ON_TRACK_TO_EXCEED, month.start, used, allotment,
                                   "on track to hit the monthly limit before the month ends"))
    elif state.trial_started_at is not None and state.trial_used >= state.trial.reports > 0:
        wanted.append(AlertDue(QuotaAlertKind.LIMIT_REACHED, state.trial_started_at, state.trial_used,
                               state.trial.reports, QuotaDenialReason.TRIAL_EXHAUSTED.value))
    limit = state.per_user_monthly_limit
    if limit:
        for user_id in sorted(users):
            if usage.used_by(user_id) >= limit:
                wanted.append(AlertDue(QuotaAlertKind.LIMIT_REACHED, month.start, usage.used_by(user_id), limit,
                                       QuotaDenialReason.USER_LIMIT_REACHED.value, user_id=user_id))
    return wanted

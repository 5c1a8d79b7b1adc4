"""Report-quota administration: put an org on a plan, start its trial, per-user limit, alert thresholds,
top-ups, and the read of its state. Refusals are ``QuotaRefused`` with a machine-readable code.

Each write runs in one short locked transaction of the store that bumps the org's version, so a batch of
report credits decided on the old configuration cannot commit; the committer is told to forget what it
remembered of the org.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from services.ingest.service_layer.quota_admission import QuotaAdmission, quota_state_of
from services.ingest.service_layer.quota_commit import BatchCommitter, EventLoopClock
from services.ingest.service_layer.quota_errors import QuotaRefusalCode, QuotaRefused
from services.ingest.service_layer.quota_ports import OrgConfigStore
from shared.adapters.postgres.quota_store import OrgRow, UnknownOrg
from shared.domain.calendar import Period, calendar_month, zone
from shared.domain.catalog import Catalog, Plan, QuotaWindow
from shared.domain.errors import DomainError
from shared.domain.quota import OrgQuotaState, TrialAllowance, crossed_thresholds, effective_allotment, remaining

REPORT_PLAN_FAMILY = "report_quota"


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


class QuotaAdmin:
    """The administrative use cases of the report quota and the read of an org's state."""

    def __init__(self, store: OrgConfigStore, clock: EventLoopClock, catalog: Catalog,
                 committer: BatchCommitter, current_catalog: Callable[[], Catalog] | None = None) -> None:
        """``current_catalog``: the catalog now (the stored one: report plans created through the API);
        ``catalog`` when not given. The report plans are derived again only when its snapshot changes."""
        self._store = store
        self._clock = clock
        self._committer = committer
        self._current_catalog = current_catalog
        self._derived_from: Catalog | None = None
        self._derive(catalog)

    def _derive(self, catalog: Catalog) -> None:
        self._derived_from = catalog
        self._monthly, trial_plan = report_plans(catalog)
        if trial_plan is not None and trial_plan.quota is not None:
            self._trial_allowance = TrialAllowance(trial_plan.quota.limit, trial_plan.quota.window_days or 14)
        else:
            self._trial_allowance = TrialAllowance()

    def _refreshed(self) -> None:
        if self._current_catalog is not None:
            catalog = self._current_catalog()
            if catalog is not self._derived_from:
                self._derive(catalog)

    @property
    def _plans(self) -> dict[str, Plan]:
        self._refreshed()
        return self._monthly

    @property
    def _trial(self) -> TrialAllowance:
        self._refreshed()
        return self._trial_allowance

    def plan(self, plan: str) -> Plan:
        found = self._plans.get(plan.strip().lower())
        if found is None:
            names = sorted({p.name for p in self._plans.values()})
            raise QuotaRefused(QuotaRefusalCode.UNKNOWN_PLAN, f"unknown report plan {plan!r}; one of {names}",
                               field="plan")
        return found

    async def set_plan(self, org_id: str, plan_name: str, *, timezone: str | None = None,
                       subscription_id: str | None = None) -> QuotaView:
        """Put the org on a monthly report plan, effective at once; the month's used count carries over."""
        plan = self.plan(plan_name)
        assert plan.quota is not None
        tz = await self._timezone_for(org_id, timezone)
        month = calendar_month(await self._clock.now(), tz)
        changes: dict[str, object] = {"plan_id": plan.id, "plan_monthly_reports": plan.quota.limit,
                                      "timezone": tz}
        if subscription_id is not None:
            changes["subscription_id"] = subscription_id
        await self._store.configure(org_id, changes, create_timezone=tz, month=(month.start, month.end),
                                    month_plan_reports=plan.quota.limit)
        self._committer.forget(org_id, timezone=tz)
        return await self.view(org_id)

    async def subscription_of(self, org_id: str) -> str | None:
        """The billing subscription the org's report plan is billed on (None: none known or no such org)."""
        try:
            return (await self._store.org(org_id)).subscription_id
        except UnknownOrg:
            return None

    async def start_trial(self, org_id: str, *, timezone: str | None = None) -> QuotaView:
        """Start the org's one trial now (a second call changes nothing); refused for an org on a plan."""
        tz = await self._timezone_for(org_id, timezone)
        try:
            org = await self._store.org(org_id)
        except UnknownOrg:
            org = None
        if org is not None and org.plan_id is not None:
            raise QuotaRefused(QuotaRefusalCode.PLAN_ALREADY_SET, "the org is on a plan; a trial is for new orgs")
        if org is None or org.trial_started_at is None:
            await self._store.configure(
                org_id, {"trial_started_at": await self._clock.now(), "trial_reports": self._trial.reports,
                         "trial_days": self._trial.days, "timezone": tz}, create_timezone=tz)
            self._committer.forget(org_id, timezone=tz)
        return await self.view(org_id)

    async def set_user_limit(self, org_id: str, limit: int | None) -> QuotaView:
        """Each user of the org may run at most ``limit`` reports per month (None: no per-user limit)."""
        if limit is not None and limit < 0:
            raise QuotaRefused(QuotaRefusalCode.INVALID_LIMIT, "the per-user limit must not be negative",
                               field="limit")
        await self._require_org(org_id)
        await self._store.configure(org_id, {"per_user_monthly_limit": limit})
        self._committer.forget(org_id)
        return await self.view(org_id)

    async def set_alert_thresholds(self, org_id: str, thresholds_percent: Sequence[int]) -> QuotaView:
        """Alert when these percentages of the month's allotment are reached (default 80 and 100)."""
        thresholds = tuple(sorted(set(thresholds_percent)))
        try:
            crossed_thresholds(0, 0, 1, thresholds)  # the domain validates the values
        except (DomainError, TypeError) as error:
            raise QuotaRefused(QuotaRefusalCode.INVALID_THRESHOLDS, str(error),
                               field="thresholds_percent") from error
        if not thresholds or any(t > 100 for t in thresholds):
            raise QuotaRefused(QuotaRefusalCode.INVALID_THRESHOLDS, "give 1 to 100 percent, at least one",
                               field="thresholds_percent")
        await self._require_org(org_id)
        await self._store.configure(org_id, {"alert_thresholds": list(thresholds)})
        self._committer.forget(org_id)
        return await self.view(org_id)

    async def top_up(self, org_id: str, reports: int, *, top_up_id: str | None, granted_by: str
                     ) -> tuple[QuotaView, bool, datetime]:
        """Add ``reports`` for the current month only: (state, applied now, expiry = the month's end)."""
        org = await self._require_org(org_id)
        at = await self._clock.now()
        month = calendar_month(at, org.timezone)
        try:
            OrgQuotaState(plan_monthly_reports=org.plan_monthly_reports,
                          timezone=org.timezone).with_top_up(reports, at)
        except (DomainError, TypeError) as error:
            raise QuotaRefused(QuotaRefusalCode.INVALID_TOP_UP, str(error), field="reports") from error
        self._committer.forget(org_id)
        applied, _total = await self._store.top_up(
            org_id, top_up_id or f"topup_{uuid.uuid4().hex}", reports, (month.start, month.end), granted_by, at)
        return await self.view(org_id), applied, month.end

    async def view(self, org_id: str, user_id: str | None = None) -> QuotaView:
        org = await self._require_org(org_id)
        at = await self._clock.now()
        month = calendar_month(at, org.timezone)
        snapshot = await self._store.load(org_id, month.start, [user_id] if user_id else [], [])
        state = quota_state_of(snapshot, month)
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
            return await self._store.org(org_id)
        except UnknownOrg:
            raise QuotaRefused(QuotaRefusalCode.UNKNOWN_ORG,
                               f"org {org_id!r} has no report plan or trial") from None

    async def _timezone_for(self, org_id: str, requested: str | None) -> str:
        if requested is not None:
            try:
                zone(requested)
            except (DomainError, ValueError) as error:
                raise QuotaRefused(QuotaRefusalCode.INVALID_TIMEZONE, str(error), field="timezone") from error
            return requested
        try:
            return (await self._store.org(org_id)).timezone
        except UnknownOrg:
            return "UTC"


@dataclass(frozen=True)
class QuotaService:
    """The report quota's use cases, sharing one store, one clock and one committer (what the edge app holds
    as ``app.state.quota``): ``admission`` decides report credits, ``admin`` configures orgs and reads them."""

    admission: QuotaAdmission
    admin: QuotaAdmin

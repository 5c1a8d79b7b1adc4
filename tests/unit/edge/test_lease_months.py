"""The report-credit leases at a month boundary and after a zone change (issue 18 review), in memory:
``LeasedCredits`` over a hand-made lease store that answers like PostgreSQL would (every admission under a live
lease is stored), so what the lease path decides and writes there can be read exactly."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from services.ingest.service_layer import quota_leases
from services.ingest.service_layer.quota_alerts import AlertNotifications
from services.ingest.service_layer.quota_leases import GRANTS_IN_FLIGHT, LeasedCredits
from shared.adapters.postgres.quota_lease_store import LeasedAdmission, LeasedAlert, LeasedCommit, LeaseGrant
from shared.adapters.postgres.quota_store import MonthRow, OrgRow, OrgSnapshot
from shared.domain.calendar import calendar_month

ORG = "org_review"
ALLOTMENT = 1000


class _Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    async def now(self) -> datetime:
        return self.at


class _Committer:
    """What ``LeasedCredits`` asks of the exact path's committer: the org's zone, and forget listeners."""

    def __init__(self) -> None:
        self.listeners: list = []  # type: ignore[type-arg]
        self.timezone = "UTC"

    def on_forget(self, listener) -> None:  # type: ignore[no-untyped-def]
        self.listeners.append(listener)

    def timezone_of(self, org_id: str) -> str | None:
        return self.timezone

    def remember(self, org_id: str, snapshot: OrgSnapshot, month: object) -> None:
        pass  # the exact path's remembered state: not used here

    def forget(self, org_id: str, *, timezone: str | None = None) -> None:
        self.timezone = timezone or self.timezone
        for listener in self.listeners:
            listener(org_id)


class _Store:
    """Grants every lease asked for (a block of 100) on the month's counters held here; stores every
    admission (PostgreSQL would: the leases are live, the enquiries new)."""

    def __init__(self, timezone: str = "UTC", thresholds: tuple[int, ...] = (80, 100)) -> None:
        self.timezone = timezone
        self.thresholds = thresholds
        self.used: dict[datetime, int] = {}
        self.grants: list[datetime] = []
        self.alerts: list[LeasedAlert] = []
        self.stored: set[str] = set()

    async def grant(self, org_id: str, month_start: datetime, month_end: datetime, holder: str, *, wanted: int,
                    fraction: int, min_free: int, seconds: float) -> LeaseGrant:
        self.grants.append(month_start)
        org = OrgRow(org_id=org_id, plan_id="reports_ultimate", plan_monthly_reports=ALLOTMENT,
                     per_user_monthly_limit=None, timezone=self.timezone, trial_started_at=None, trial_reports=10,
                     trial_days=14, trial_used=0, alert_thresholds=self.thresholds, subscription_id=None, version=1)
        month = MonthRow(month_start, month_end, ALLOTMENT, 0, self.used.get(month_start, 0), 100)
        snapshot = OrgSnapshot(org, month, {}, {}, frozenset())
        return LeaseGrant(uuid.uuid4(), org_id, month_start, 100, seconds, snapshot)

    async def commit(self, admissions: Sequence[LeasedAdmission], alerts: Sequence[LeasedAlert],
                     usage_topic: str, alert_topic: str) -> LeasedCommit:
        consumed: dict[uuid.UUID, int] = {}
        new = [a for a in admissions if a.enquiry_id not in self.stored]  # ON CONFLICT DO NOTHING
        for admission in new:
            self.stored.add(admission.enquiry_id)
            self.used[admission.month_start] = self.used.get(admission.month_start, 0) + 1
            consumed[admission.lease_id] = consumed.get(admission.lease_id, 0) + 1
        if new:  # alerts are written only for orgs with an admission in the statement
            self.alerts += alerts
        return LeasedCommit(
            admitted=frozenset((a.org_id, a.enquiry_id) for a in new),
            live=frozenset(a.lease_id for a in admissions), consumed=consumed,
            used={(a.org_id, a.month_start): self.used[a.month_start] for a in admissions},
            alerts_inserted=frozenset(alert.alert.event_id for alert in alerts))


def _thresholds(store: _Store) -> list[tuple[int, int]]:
    """(threshold, used) of the threshold alerts written ("on track" is due anyway mid-month at 49 %)."""
    return [(a.alert.key.threshold_percent, a.alert.used) for a in store.alerts
            if a.alert.key.kind == "quota.threshold_reached"]


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def _credits(store: _Store, clock: _Clock, committer: _Committer) -> LeasedCredits:
    return LeasedCredits(store, committer, clock, AlertNotifications(None), "report.run",  # type: ignore[arg-type]
                         lease_seconds=30.0, holder="review:1")


async def test_the_first_leased_answers_of_a_new_month_count_that_months_use_not_the_last_ones() -> None:
    january = calendar_month(datetime(2026, 1, 31, 23, 0, tzinfo=UTC), "UTC")
    store = _Store(thresholds=(50,))
    store.used[january.start] = 600
    clock = _Clock(datetime(2026, 1, 31, 23, 0, tzinfo=UTC))
    credits = _credits(store, clock, _Committer())
    try:
        assert await credits.try_admit(ORG, "u1", "jan-0") is None  # no lease yet: one is asked for
        await _settle()
        jan = await credits.try_admit(ORG, "u1", "jan-1")
        assert jan is not None and jan.org_remaining == ALLOTMENT - 601
        store.alerts.clear()  # January's 50 % alert (601 of 1,000) is due

        clock.at = datetime(2026, 2, 1, 0, 0, 1, tzinfo=UTC)
        assert await credits.try_admit(ORG, "u1", "feb-0") is None  # no February lease yet
        await _settle()
        feb = await credits.try_admit(ORG, "u1", "feb-1")
    finally:
        await credits.aclose()

    assert feb is not None and feb.month.start == datetime(2026, 2, 1, tzinfo=UTC)
    assert [alert.alert.key.kind for alert in store.alerts] == []  # 1 of 1,000 used in February
    assert feb.org_remaining == ALLOTMENT - 1


async def test_after_a_zone_change_the_next_lease_is_asked_for_the_month_of_the_new_zone() -> None:
    at = datetime(2026, 1, 15, 12, tzinfo=UTC)
    store = _Store()
    committer = _Committer()
    credits = _credits(store, _Clock(at), committer)
    try:
        assert await credits.try_admit(ORG, "u1", "utc-0") is None
        await _settle()
        assert await credits.try_admit(ORG, "u1", "utc-1") is not None  # decided under a UTC-month lease
        store.timezone = "Asia/Tokyo"  # PUT plan with a new zone: configure revokes, the committer forgets
        committer.forget(ORG, timezone="Asia/Tokyo")

        await credits.try_admit(ORG, "u1", "tokyo-0")
        await _settle()
    finally:
        await credits.aclose()

    assert store.grants[-1] == calendar_month(at, "Asia/Tokyo").start, [g.isoformat() for g in store.grants]


async def test_retries_of_stored_enquiries_in_a_group_do_not_count_as_use_for_its_alerts() -> None:
    """491 used, 4 admitted one by one (495); then one group holds a new enquiry and retries of the 4 (a
    client retrying after a timeout). PostgreSQL stores only the new one: 496 of 1,000, under the 50 %
    threshold, so no alert may be written (the retries go to the exact path, which replays them)."""
    at = datetime(2026, 1, 15, 12, tzinfo=UTC)
    store = _Store(thresholds=(50,))
    store.used[calendar_month(at, "UTC").start] = 491
    credits = _credits(store, _Clock(at), _Committer())
    try:
        assert await credits.try_admit(ORG, "u1", "warm") is None
        await _settle()
        for n in range(4):
            assert await credits.try_admit(ORG, "u1", f"e{n}") is not None
        assert _thresholds(store) == []

        answers = await asyncio.gather(credits.try_admit(ORG, "u1", "e-new"),
                                       *(credits.try_admit(ORG, "u1", f"e{n}") for n in range(4)))
    finally:
        await credits.aclose()

    assert answers[0] is not None and answers[1:] == [None] * 4  # the retries are the exact path's
    assert store.used[calendar_month(at, "UTC").start] == 496
    assert _thresholds(store) == []


class _SlowStore(_Store):
    """Grants that wait for the test: how many are in flight at once is what the process allows."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.in_flight = 0
        self.most = 0

    async def grant(self, org_id: str, month_start: datetime, month_end: datetime, holder: str, *, wanted: int,
                    fraction: int, min_free: int, seconds: float) -> LeaseGrant:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await self.gate.wait()
            return await super().grant(org_id, month_start, month_end, holder, wanted=wanted, fraction=fraction,
                                       min_free=min_free, seconds=seconds)
        finally:
            self.in_flight -= 1


async def test_orgs_asking_for_leases_at_once_are_granted_a_few_at_a_time() -> None:
    """Renewals of leases granted together come due together: 50 grants at once took most of the quota
    pool's connections, and the group statement (every org's answers) waited for one."""
    store = _SlowStore()
    credits = _credits(store, _Clock(datetime(2026, 1, 15, 12, tzinfo=UTC)), _Committer())
    try:
        for n in range(50):
            assert await credits.try_admit(f"org_{n}", "u1", "first") is None  # each org asks for a lease
        await _settle()
        assert store.most == GRANTS_IN_FLIGHT
        store.gate.set()
        for _ in range(30):
            await _settle()
        assert all([await credits.try_admit(f"org_{n}", "u1", f"second-{n}") for n in range(50)])
    finally:
        await credits.aclose()
    assert len(store.grants) == 50


async def test_leases_granted_at_the_same_moment_come_due_at_different_moments() -> None:
    """Without it every org warmed up together asks for its next block in the same second, for good."""
    store = _Store()
    credits = _credits(store, _Clock(datetime(2026, 1, 15, 12, tzinfo=UTC)), _Committer())
    try:
        for n in range(20):
            await credits.try_admit(f"org_{n}", "u1", "first")
        await _settle()
        deadlines = {lease.deadline for org in credits._orgs.values() for lease in org.leases}
    finally:
        await credits.aclose()
    assert len(deadlines) == 20
    assert max(deadlines) - min(deadlines) > 30.0 * 0.2 * 0.25  # spread over the jitter, not the loop's turns


async def test_a_short_lease_is_usable_once_granted_whatever_the_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review: with the jitter taken from the whole life, a 0.6 s lease (a valid setting) could get a local
    deadline before the moment it was granted: reserved in PostgreSQL, never used, and asked for again."""
    monkeypatch.setattr(random, "uniform", lambda low, high: high)  # the largest jitter
    store = _Store()
    credits = LeasedCredits(store, _Committer(), _Clock(datetime(2026, 1, 15, 12, tzinfo=UTC)),  # type: ignore[arg-type]
                            AlertNotifications(None), "report.run", lease_seconds=0.6, holder="review:1")
    try:
        assert await credits.try_admit(ORG, "u1", "e0") is None  # asks for a lease
        await _settle()
        answer = await credits.try_admit(ORG, "u1", "e1")
    finally:
        await credits.aclose()
    assert answer is not None


class _StuckStore(_Store):
    """Grants of ``stuck`` orgs never end (waiting on a row another transaction holds)."""

    def __init__(self, stuck: set[str]) -> None:
        super().__init__()
        self.stuck = stuck

    async def grant(self, org_id: str, month_start: datetime, month_end: datetime, holder: str, *, wanted: int,
                    fraction: int, min_free: int, seconds: float) -> LeaseGrant:
        if org_id in self.stuck:
            await asyncio.Event().wait()
        return await super().grant(org_id, month_start, month_end, holder, wanted=wanted, fraction=fraction,
                                   min_free=min_free, seconds=seconds)


async def test_two_stuck_grants_do_not_keep_other_orgs_from_a_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review: the two grant slots had no time limit, so two grants stuck behind long transactions on their
    orgs' rows kept every other org of the process on the exact path."""
    monkeypatch.setattr(quota_leases, "GRANT_TIMEOUT_SECONDS", 0.2)
    monkeypatch.setattr(quota_leases, "RETRY_SECONDS", 0.1)
    store = _StuckStore({"org_a", "org_b"})
    credits = _credits(store, _Clock(datetime(2026, 1, 15, 12, tzinfo=UTC)), _Committer())
    try:
        await credits.try_admit("org_a", "u1", "a0")
        await credits.try_admit("org_b", "u1", "b0")
        await _settle()
        await credits.try_admit("org_c", "u1", "c0")  # asks for a lease: queued behind the stuck two
        await asyncio.sleep(0.5)  # the stuck grants time out and give their slots up
        await _settle()
        answer = await credits.try_admit("org_c", "u1", "c1")
    finally:
        await credits.aclose()
    assert answer is not None


async def test_an_org_is_leased_only_once_this_process_sees_it_at_the_minimum_rate(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Below `min_rate` requests in the last full second the exact path decides (it answers sooner: no wait for
    the process's group statement); from it on, the process asks for a lease and decides in memory."""
    now = [1000.0]
    monkeypatch.setattr(quota_leases.time, "monotonic", lambda: now[0])
    store = _Store()
    credits = LeasedCredits(store, _Committer(), _Clock(datetime(2026, 1, 15, 12, tzinfo=UTC)),  # type: ignore[arg-type]
                            AlertNotifications(None), "report.run", lease_seconds=30.0, min_rate=50, holder="rate:1")
    try:
        for i in range(49):  # the first second: 49 requests
            assert await credits.try_admit(ORG, "u1", f"slow-{i}") is None
        now[0] += 1.0
        for i in range(60):  # the next: 49 in the last full second, so still the exact path; 60 in this one
            assert await credits.try_admit(ORG, "u1", f"busier-{i}") is None
        await _settle()
        assert store.grants == []

        now[0] += 1.0
        assert await credits.try_admit(ORG, "u1", "hot-0") is None  # 60 in the last second: a lease is asked for
        await _settle()
        assert len(store.grants) == 1
        admitted = await credits.try_admit(ORG, "u1", "hot-1")
        assert admitted is not None and admitted.allowed
    finally:
        await credits.aclose()

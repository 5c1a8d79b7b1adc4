"""The exact path beside leases, without PostgreSQL: reports sitting in other processes' leases are spoken
for when deciding, are not "used" for alerts, and never cause a refusal (they are revoked first)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from services.ingest.quota_wiring import quota_service
from services.ingest.service_layer import quota_leases
from services.ingest.service_layer.quota_admission import CreditRequest, decide_credits
from services.ingest.service_layer.quota_alerts import AlertNotifications
from services.ingest.service_layer.quota_leases import LeasedCredits
from shared.adapters.catalog_file import load_default_catalog
from shared.adapters.clock import ManualClock
from shared.adapters.postgres.quota_lease_store import LeasedAdmission, LeasedAlert, LeasedCommit, LeaseGrant
from shared.adapters.postgres.quota_store import MonthRow, OrgRow, OrgSnapshot
from shared.domain.calendar import calendar_month
from shared.domain.quota import QuotaDenialReason
from tests.unit.edge.quota_fakes import FakeNotifier, FakeQuotaStore

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)
MONTH = calendar_month(NOW)


def _snapshot(plan: int, used: int, leased: int) -> OrgSnapshot:
    org = OrgRow("acme", "Lite", plan, None, "UTC", None, 10, 14, 0, (80, 100), None, 3)
    return OrgSnapshot(org, MonthRow(MONTH.start, MONTH.end, plan, 0, used, leased), {}, {}, frozenset())


def test_reports_in_leases_are_spoken_for_so_only_the_unleased_rest_is_admitted() -> None:
    batch = [CreditRequest("ann", f"e{i}") for i in range(3)]

    answers, write = decide_credits(_snapshot(plan=20, used=10, leased=8), MONTH, NOW, batch, "report.run")

    assert [answers[f"e{i}"].allowed for i in range(3)] == [True, True, False]
    assert answers["e2"].reason is QuotaDenialReason.ORG_LIMIT_REACHED
    assert [answers[f"e{i}"].org_remaining for i in range(2)] == [1, 0]
    assert write.granted == 2


def test_alerts_look_at_the_reports_used_not_at_those_sitting_in_leases() -> None:
    # 12 of 20 used after the batch (60 %): no threshold, although used + leased reaches 100 %
    _answers, write = decide_credits(_snapshot(plan=20, used=10, leased=8), MONTH, NOW,
                                     [CreditRequest("ann", "e1"), CreditRequest("ann", "e2")], "report.run")

    assert write.alerts == []


async def test_a_refusal_for_want_of_reports_held_in_leases_revokes_them_and_decides_again() -> None:
    store, notifier = FakeQuotaStore(), FakeNotifier()
    revoked: list[str] = []

    async def revoke(org_id: str) -> int:
        revoked.append(org_id)
        key = (org_id, MONTH.start)
        store.months[key] = replace(store.months[key], leased=0)
        return 1

    quota = quota_service(store, ManualClock(NOW), load_default_catalog(), AlertNotifications(notifier),
                          revoke_leases=revoke)
    await quota.admin.set_plan("acme", "Lite")
    key = ("acme", MONTH.start)
    store.months[key] = replace(store.months[key], used=10, leased=10)  # another process leased the rest

    answers = await asyncio.gather(*(quota.admission.use_credit("acme", f"u{i}", f"e{i}") for i in range(12)))

    assert revoked == ["acme"]
    assert [a.allowed for a in answers] == [True] * 10 + [False] * 2
    assert store.months[key].used == 20


async def test_no_revocation_when_no_report_sits_in_a_lease() -> None:
    store, notifier = FakeQuotaStore(), FakeNotifier()
    revoked: list[str] = []

    async def revoke(org_id: str) -> int:
        revoked.append(org_id)
        return 0

    quota = quota_service(store, ManualClock(NOW), load_default_catalog(), AlertNotifications(notifier),
                          revoke_leases=revoke)
    await quota.admin.set_plan("acme", "Lite")

    answers = await asyncio.gather(*(quota.admission.use_credit("acme", f"u{i}", f"e{i}") for i in range(21)))

    assert [a.allowed for a in answers].count(True) == 20 and revoked == []


class _LeasesOverTheFakeStore:
    """``LeaseStore`` on ``FakeQuotaStore``'s rows as PostgreSQL keeps them: a grant reserves ``block`` reports
    (``leased``) and moves the org's version; a group commit moves its admissions from ``leased`` to ``used``
    and leaves the version alone."""

    def __init__(self, store: FakeQuotaStore, block: int) -> None:
        self.store, self.block, self.grants, self.asked = store, block, 0, 0

    async def grant(self, org_id: str, month_start: datetime, month_end: datetime, holder: str, *, wanted: int,
                    fraction: int, min_free: int, seconds: float) -> LeaseGrant | None:
        self.asked += 1
        if self.asked % 2:
            return None  # every other ask is refused: the exact path decides until the next grant lands
        self.grants += 1
        key = (org_id, month_start)
        self.store.months[key] = replace(self.store.months[key], leased=self.store.months[key].leased + self.block)
        self.store.write_elsewhere(org_id)  # the grant's version move
        snapshot = self.store._snapshot(org_id, month_start, [], [])
        return LeaseGrant(uuid.uuid4(), org_id, month_start, self.block, seconds, snapshot)

    async def commit(self, admissions: Sequence[LeasedAdmission], alerts: Sequence[LeasedAlert], usage_topic: str,
                     alert_topic: str) -> LeasedCommit:
        used: dict[tuple[str, datetime], int] = {}
        for a in admissions:
            key = (a.org_id, a.month_start)
            row = self.store.months[key]
            self.store.months[key] = replace(row, used=row.used + 1, leased=row.leased - 1)
            used[key] = row.used + 1
        return LeasedCommit(frozenset((a.org_id, a.enquiry_id) for a in admissions),
                            frozenset(a.lease_id for a in admissions),
                            {a.lease_id: sum(1 for b in admissions if b.lease_id == a.lease_id) for a in admissions},
                            used, frozenset())

    async def release(self, holder: str) -> int:
        return 0


async def test_the_exact_path_after_a_lease_grant_of_its_own_process_writes_without_taking_the_row_lock(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # found in review: a grant moves the org's version, so the exact path's remembered state lost its
    # compare-and-set to its own process's grant and the org was decided under its row lock for 2 s
    store, notifier = FakeQuotaStore(), FakeNotifier()
    quota = quota_service(store, ManualClock(NOW), load_default_catalog(), AlertNotifications(notifier))
    await quota.admin.set_plan("acme", "Ultimate")
    admission = quota.admission
    leases = _LeasesOverTheFakeStore(store, block=1)
    admission.leases = LeasedCredits(leases, admission.committer, admission.clock,  # type: ignore[arg-type]
                                     admission.alerts, "report.run", lease_seconds=60)

    monkeypatch.setattr(quota_leases, "RETRY_SECONDS", 0.0)  # a refused grant is asked again at once
    # blocks of one report and every other grant refused: grants, leased admissions and exact-path batches
    # (the block used up, no grant landed) alternate
    answers = []
    for i in range(12):
        answers.append(await admission.use_credit("acme", "ann", f"e{i}"))
        await asyncio.sleep(0)

    assert all(answer.allowed for answer in answers)
    assert "decide_locked" not in store.calls  # before the fix: after each grant, a lost compare-and-set and this
    assert leases.grants >= 3 and store.calls.count("commit_batch") >= 3
    assert store.months[("acme", MONTH.start)].used == 12
    await admission.aclose()

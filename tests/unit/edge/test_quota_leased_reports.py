"""The exact path beside leases, without PostgreSQL: reports sitting in other processes' leases are spoken
for when deciding, are not "used" for alerts, and never cause a refusal (they are revoked first)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from services.ingest.quota_wiring import quota_service
from services.ingest.service_layer.quota_admission import CreditRequest, decide_credits
from services.ingest.service_layer.quota_alerts import AlertNotifications
from shared.adapters.catalog_file import load_default_catalog
from shared.adapters.clock import ManualClock
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

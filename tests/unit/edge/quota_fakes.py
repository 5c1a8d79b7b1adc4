"""An in-memory report-quota store for the use cases' unit tests: the ports of
``services.ingest.service_layer.quota_ports`` with the semantics of the PostgreSQL store (compare-and-set
on the org's version, (org, enquiry) unique, alerts once per key, the CHECK backstop)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from shared.adapters.notify.port import Notification
from shared.adapters.postgres.quota_store import (
    AlertKey,
    BatchWrite,
    ConsumptionRow,
    DuplicateEnquiry,
    MonthRow,
    NewAlert,
    OrgRow,
    OrgSnapshot,
    QuotaStoreError,
    UnknownOrg,
)


class FakeQuotaStore:
    def __init__(self) -> None:
        self.orgs: dict[str, OrgRow] = {}
        self.months: dict[tuple[str, datetime], MonthRow] = {}
        self.user_used: dict[tuple[str, datetime, str], int] = {}
        self.consumptions: dict[tuple[str, str], ConsumptionRow] = {}
        self.alerts: dict[tuple[str, AlertKey], NewAlert] = {}
        self.calls: list[str] = []

    # --- what another edge process or an operator does behind this process's back ---------------------

    def write_elsewhere(self, org_id: str, *, top_ups: int = 0, month_start: datetime | None = None) -> None:
        """Another process wrote the org (its version moves); optionally a top-up of the month."""
        org = self.orgs[org_id]
        self.orgs[org_id] = replace(org, version=org.version + 1)
        if top_ups and month_start is not None:
            row = self.months[(org_id, month_start)]
            self.months[(org_id, month_start)] = replace(row, top_ups=row.top_ups + top_ups)

    # --- OrgBatchStore ---------------------------------------------------------------------------------

    async def load(self, org_id: str, month_start: datetime, users: Sequence[str],
                   enquiries: Sequence[str]) -> OrgSnapshot:
        self.calls.append("load")
        return self._snapshot(org_id, month_start, users, enquiries)

    async def commit_batch(self, write: BatchWrite) -> tuple[int | None, list[uuid.UUID]]:
        self.calls.append("commit_batch")
        return self._commit(write)

    async def decide_locked(self, org_id: str, month_start: datetime, users: Sequence[str],
                            enquiries: Sequence[str], decide: Callable[[OrgSnapshot], BatchWrite]
                            ) -> tuple[OrgSnapshot, BatchWrite, int, list[uuid.UUID]]:
        self.calls.append("decide_locked")
        snapshot = self._snapshot(org_id, month_start, users, enquiries)
        write = decide(snapshot)
        version, inserted = snapshot.org.version, list[uuid.UUID]()
        if write.consumptions:
            committed, inserted = self._commit(write)
            assert committed is not None
            version = committed
        elif write.alerts:
            inserted = self._insert_alerts(org_id, write.alerts)
        return snapshot, write, version, inserted

    async def record_alerts(self, org_id: str, at: datetime, alerts: Sequence[NewAlert], alert_topic: str,
                            message_key: str) -> list[uuid.UUID]:
        self.calls.append("record_alerts")
        return self._insert_alerts(org_id, alerts)

    # --- OrgConfigStore --------------------------------------------------------------------------------

    async def configure(self, org_id: str, changes: dict[str, Any], *, create_timezone: str = "UTC",
                        month: tuple[datetime, datetime] | None = None,
                        month_plan_reports: int | None = None) -> OrgRow:
        org = self.orgs.get(org_id) or OrgRow(org_id, None, None, None, create_timezone, None, 10, 14, 0, (80, 100),
                                               None, 0)
        changes = {k: tuple(v) if k == "alert_thresholds" else v for k, v in changes.items()}
        org = replace(org, **changes, version=org.version + 1)
        self.orgs[org_id] = org
        if month is not None:
            row = self.months.get((org_id, month[0]))
            self.months[(org_id, month[0])] = MonthRow(month[0], month[1], month_plan_reports,
                                                       row.top_ups if row else 0, row.used if row else 0)
        return org

    async def org(self, org_id: str) -> OrgRow:
        if org_id not in self.orgs:
            raise UnknownOrg(org_id)
        return self.orgs[org_id]

    async def top_up(self, org_id: str, top_up_id: str, reports: int, month: tuple[datetime, datetime],
                     granted_by: str, at: datetime) -> tuple[bool, int]:
        org = await self.org(org_id)
        row = self.months.get((org_id, month[0])) or MonthRow(month[0], month[1], org.plan_monthly_reports, 0, 0)
        self.months[(org_id, month[0])] = replace(row, top_ups=row.top_ups + reports)
        self.orgs[org_id] = replace(org, version=org.version + 1)
        return True, row.top_ups + reports

    # --- internals -------------------------------------------------------------------------------------

    def _snapshot(self, org_id: str, month_start: datetime, users: Sequence[str],
                  enquiries: Sequence[str]) -> OrgSnapshot:
        if org_id not in self.orgs:
            raise UnknownOrg(org_id)
        org = self.orgs[org_id]
        user_used = {u: self.user_used[(org_id, month_start, u)] for u in users
                     if (org_id, month_start, u) in self.user_used}
        prior = {e: self.consumptions[(org_id, e)] for e in enquiries if (org_id, e) in self.consumptions}
        sent = frozenset(key for (org, key) in self.alerts if org == org_id
                         and key.period_start in (month_start, org_row_trial(self.orgs[org_id])))
        return OrgSnapshot(org, self.months.get((org_id, month_start)), user_used, prior, sent)

    def _commit(self, write: BatchWrite) -> tuple[int | None, list[uuid.UUID]]:
        org = self.orgs[write.org_id]
        if org.version != write.seen_version or any(
                (write.org_id, e) in self.consumptions for e in write.refused_enquiries):
            return None, []
        if any((write.org_id, c.enquiry_id) in self.consumptions for c in write.consumptions):
            raise DuplicateEnquiry(write.org_id)
        key = (write.org_id, write.month_start)
        row = self.months.get(key) or MonthRow(write.month_start, write.month_end, write.month_plan_reports, 0, 0)
        row = replace(row, used=row.used + write.granted)
        if row.plan_monthly_reports is not None and row.used + row.leased > row.plan_monthly_reports + row.top_ups:
            raise QuotaStoreError("quota backstop refused the write")
        self.months[key] = row
        for user, count in write.user_grants.items():
            user_key = (write.org_id, write.month_start, user)
            self.user_used[user_key] = self.user_used.get(user_key, 0) + count
        for c in write.consumptions:
            self.consumptions[(write.org_id, c.enquiry_id)] = ConsumptionRow(
                c.enquiry_id, c.user_id, write.month_start, write.month_end, write.consumed_at, c.org_allotment,
                c.org_remaining, c.user_limit, c.user_remaining, c.on_trial)
        self.orgs[write.org_id] = replace(org, version=org.version + 1, trial_used=org.trial_used + write.trial_delta)
        return org.version + 1, self._insert_alerts(write.org_id, write.alerts)

    def _insert_alerts(self, org_id: str, alerts: Sequence[NewAlert]) -> list[uuid.UUID]:
        inserted: list[uuid.UUID] = []
        for alert in alerts:
            if (org_id, alert.key) not in self.alerts:
                self.alerts[(org_id, alert.key)] = alert
                inserted.append(alert.event_id)
        return inserted


def org_row_trial(org: OrgRow) -> datetime | None:
    return org.trial_started_at


class FakeNotifier:
    channel = "fake"

    def __init__(self) -> None:
        self.sent: list[Notification] = []

    async def send(self, notification: Notification) -> None:
        self.sent.append(notification)

    async def aclose(self) -> None:
        return None

"""The ports the report-quota use cases need from their store (``shared.adapters.postgres.quota_store.QuotaStore``
implements both; unit tests use an in-memory fake)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from shared.adapters.postgres.quota_store import BatchWrite, NewAlert, OrgRow, OrgSnapshot


class OrgBatchStore(Protocol):
    """Read an org for a batch, and commit a batch's write (compare-and-set, or under the row lock)."""

    async def load(self, org_id: str, month_start: datetime, users: Sequence[str],
                   enquiries: Sequence[str]) -> OrgSnapshot: ...

    async def commit_batch(self, write: BatchWrite) -> tuple[int | None, list[uuid.UUID]]: ...

    async def decide_locked(self, org_id: str, month_start: datetime, users: Sequence[str],
                            enquiries: Sequence[str], decide: Callable[[OrgSnapshot], BatchWrite]
                            ) -> tuple[OrgSnapshot, BatchWrite, int, list[uuid.UUID]]: ...

    async def record_alerts(self, org_id: str, at: datetime, alerts: Sequence[NewAlert], alert_topic: str,
                            message_key: str) -> list[uuid.UUID]: ...


class OrgConfigStore(Protocol):
    """An org's quota configuration and top-ups (administrative writes bump the org's version)."""

    async def load(self, org_id: str, month_start: datetime, users: Sequence[str],
                   enquiries: Sequence[str]) -> OrgSnapshot: ...

    async def configure(self, org_id: str, changes: dict[str, Any], *, create_timezone: str = "UTC",
                        month: tuple[datetime, datetime] | None = None,
                        month_plan_reports: int | None = None) -> OrgRow: ...

    async def org(self, org_id: str) -> OrgRow: ...

    async def top_up(self, org_id: str, top_up_id: str, reports: int, month: tuple[datetime, datetime],
                     granted_by: str, at: datetime) -> tuple[bool, int]: ...


class QuotaStorePort(OrgBatchStore, OrgConfigStore, Protocol):
    """Both: what the report quota's wiring is given (``QuotaStore``, or the unit tests' in-memory store)."""

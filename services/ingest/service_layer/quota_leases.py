"""Report credits decided from memory under leases: the path most requests of a busy org take.

An edge process that sees an org's requests reserves a block of the org's month (a *lease*, granted by
``LeaseStore.grant``: a compare-and-set in PostgreSQL, sized from the org's recent rate, expiring by the
database clock). While it holds one, ``LeasedCredits.try_admit`` decides a request in memory with the
domain's ``decide`` (the rule lives only there) on the org's counters as this process knows them, takes one
report of the lease, and hands the admission to the process's ``PipelinedWriter``: one statement writes the
admissions of every org decided since the last one (consumption row, ``usage.recorded`` event in the org's
outbox bundle, counter moves, alerts by their unique key). The answer is given only once that statement
committed it.

``try_admit`` returns ``None`` whenever it cannot answer that way, and the caller decides on the exact path
(``QuotaAdmission``'s compare-and-set, which also replays a stored enquiry):

- the org has no live lease with a report left for this month (none granted yet, used up, expired by the
  local deadline, which is ahead of the database's, or revoked); a grant is then started in the background;
- the rule would refuse (refusals are only ever given on state read now, by the exact path);
- the statement did not store the admission: its enquiry was stored before (by any process: the exact path
  replays the stored answer, and the lease's report goes back to this process, which counts what the
  database says each lease consumed), the lease was no longer live by the database clock (the fence), or
  the statement failed (nothing of it was written).

Orgs on trial or with a per-user limit get no lease (``LeaseStore.grant``), so they stay on the exact path:
a per-user limit would need per-user blocks, a trial is ten reports.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from services.ingest.service_layer.quota_admission import (
    CreditAnswer,
    CreditRequest,
    _answer,
    _consumption,
    quota_state_of,
)
from services.ingest.service_layer.quota_alerts import AlertNotifications, new_alerts
from services.ingest.service_layer.quota_commit import BatchCommitter, EventLoopClock
from services.ingest.service_layer.quota_pipeline import PipelinedWriter
from shared.adapters.postgres.quota_lease_store import LeasedAdmission, LeasedAlert, LeaseGrant, LeaseStore
from shared.adapters.postgres.quota_store import AlertKey, OrgSnapshot
from shared.contracts import topics
from shared.domain.calendar import Period, calendar_month
from shared.domain.quota import OrgQuotaState, decide_on_count

_log = logging.getLogger("services.ingest.quota")

# NOTE: a lease is the org's demand over the lease's life (at least MIN_BLOCK), never more than 1/FRACTION of
# what is free, and none when less than MIN_FREE is free: an org near its limit is decided exactly, so a burst
# against its last reports (the race tests: 100 left, 1,000 asking) never involves a lease.
MIN_BLOCK = 16
FRACTION = 8
MIN_FREE = 256
# after a refused grant (no plan, a per-user limit, too little free), the org is not asked about again for
RETRY_SECONDS = 2.0
# stop using a lease this share of its life before the database clock ends it (clock drift, a slow statement)
SAFETY_SHARE = 0.2
# NOTE: and up to this share of what is left earlier again, at random: orgs whose leases were granted together
# (a warm-up) would otherwise all ask for their next block in the same second, and so on for every block after.
JITTER_SHARE = 0.2
# NOTE: grants in flight at once per process. Leases granted together (an edge's warm-up, a bench) come due
# together: measured, 50 orgs' renewals landing within a second took most of the quota pool's connections
# and their org locks, and the group statement waited behind them (p99 at 1,000 requests/s 106-112 ms with
# 5 s leases against 31-33 ms with 60 s ones, back to back). An org waiting for a grant slot still decides on
# the rest of its lease (renewals start with about a second of demand left).
GRANTS_IN_FLIGHT = 2
# a grant holds its slot at most this long (its statements also give up waiting for a row lock after 1 s): two
# grants stuck behind a long transaction on their orgs' rows must not keep every other org from a lease
GRANT_TIMEOUT_SECONDS = 3.0
# NOTE: the enquiries this process decided last, per org: a retry of one of them goes to the exact path, which
# replays its stored answer. Decided again in memory, it would count as use until the statement dropped it
# (ON CONFLICT), so alerts and the answers of that group would see too much use.
RECENT_ENQUIRIES = 4096
# MIN_RATE_NOTE: leases only for an org this process sees at `min_rate` requests/s or more (the setting
# BILLING_QUOTA_LEASE_MIN_RATE). Every leased admission of the process waits for the one group statement in
# flight and then for its own; the exact path writes each org's batch by itself, at once. Measured with
# `bench_quota` (one edge, 1,000 requests/s over 50 orgs, back to back): leases on p50 2.8-2.9 ms, p99
# 10.0-12.3 ms; leases off p50 1.1-1.4 ms, p99 5.8-7.5 ms, the hot org no slower (8,808 and 8,951 against
# 6,644-8,428/s). Leases pay where an org is hot: one process decides it in memory, and several processes
# share it without losing compare-and-sets to each other.


@dataclass(slots=True)
class _Lease:
    lease_id: uuid.UUID
    month: Period
    granted: int
    deadline: float  # time.monotonic() after which this process stops deciding on it
    consumed: int = 0  # what the database says it consumed
    pending: int = 0  # decided here, statement not answered yet
    dead: bool = False

    def left(self) -> int:
        return self.granted - self.consumed - self.pending


@dataclass(slots=True)
class _Org:
    """One org as this process knows it under its leases."""

    leases: list[_Lease] = field(default_factory=list)
    snapshot: OrgSnapshot | None = None
    state: OrgQuotaState | None = None
    used: int = 0  # the month's committed count, as last read or written
    pending: int = 0
    alerts_sent: set[AlertKey] = field(default_factory=set)
    month: Period | None = None  # the month of the last request (computed again once it has ended)
    granting: bool = False
    retry_at: float = 0.0
    window_start: float = 0.0
    window_count: int = 0
    rate: int = 0  # requests in the last full second
    used_month: datetime | None = None  # the month `used` counts
    timezone: str | None = None  # the org's zone as its last grant read it
    recent: dict[str, None] = field(default_factory=dict)  # enquiries decided here, oldest first

    def remember(self, enquiry_id: str) -> None:
        self.recent[enquiry_id] = None
        if len(self.recent) > RECENT_ENQUIRIES:
            del self.recent[next(iter(self.recent))]

    def count(self, now: float) -> None:
        if now - self.window_start >= 1.0:
            self.rate = self.window_count if now - self.window_start < 2.0 else 0
            self.window_start, self.window_count = now, 0
        self.window_count += 1

    def usable(self, month_start: datetime, now: float) -> _Lease | None:
        for lease in self.leases:
            if not lease.dead and lease.month.start == month_start and lease.deadline > now and lease.left() > 0:
                return lease
        return None

    def wants_more(self, month_start: datetime, now: float, seconds: float) -> bool:
        left = sum(lease.left() for lease in self.leases
                   if not lease.dead and lease.month.start == month_start and lease.deadline > now + seconds / 4)
        return left <= max(1, self.rate)  # about a second of demand left: ask for the next block


@dataclass(frozen=True, slots=True)
class _Item:
    admission: LeasedAdmission
    decided_on: OrgQuotaState  # the org's state this admission was decided on (as granted: its count apart)
    # the month's count once it took effect: what the alerts of the org's last admission in a group look at,
    # given to the domain apart from the state (a state built per admission, or per group and org, to carry
    # it was a visible share of the lease path's profile)
    org_used: int


class LeasedCredits:
    """Decide report credits from memory under leases; see the module docstring."""

    def __init__(self, store: LeaseStore, committer: BatchCommitter, clock: EventLoopClock,
                 alerts: AlertNotifications, report_event_type: str, *, lease_seconds: float,
                 min_rate: float = 0.0, holder: str | None = None) -> None:
        """``min_rate``: requests per second (the last full second's, in this process) an org must reach before
        this process asks for its leases; see `MIN_RATE_NOTE`."""
        self._store = store
        self._min_rate = min_rate
        self._committer = committer
        self._clock = clock
        self._alerts = alerts
        self._event_type = report_event_type
        self._seconds = lease_seconds
        self._holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._orgs: dict[str, _Org] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._grant_slots = asyncio.Semaphore(GRANTS_IN_FLIGHT)
        self._writer: PipelinedWriter[_Item, bool] = PipelinedWriter(self._flush)
        committer.on_forget(self.forget)

    def forget(self, org_id: str) -> None:
        """The org's configuration changed (its leases were revoked): decide on the exact path until a new
        lease is granted."""
        org = self._orgs.get(org_id)
        if org is not None:
            for lease in org.leases:
                lease.dead = True
            org.snapshot = org.state = None
            org.month = org.timezone = None

    async def try_admit(self, org_id: str, user_id: str, enquiry_id: str) -> CreditAnswer | None:
        """The committed answer admitting this request under a lease, or None: decide it on the exact path."""
        now = time.monotonic()
        org = self._orgs.get(org_id)
        if org is None:
            if len(self._orgs) > 100_000:
                self._orgs.clear()
            org = self._orgs[org_id] = _Org(window_start=now)
        org.count(now)
        if enquiry_id in org.recent:
            return None  # a retry: the exact path replays what was stored
        if (org.granting or now < org.retry_at or org.rate < self._min_rate) and not any(
                not lease.dead and lease.deadline > now and lease.left() > 0 for lease in org.leases):
            # nothing to decide on and no grant to start (one in flight, refused lately, or the org not busy
            # enough here for a lease to pay: MIN_RATE_NOTE): not even the clock is read
            return None
        at = await self._clock.now()
        month = org.month
        if month is None or not month.contains(at):
            tz = org.timezone or self._committer.timezone_of(org_id)
            if tz is None:
                return None  # the exact path reads the org first (its time zone names the month)
            month = org.month = calendar_month(at, tz)
            if org.used_month != month.start:
                org.used, org.used_month, org.alerts_sent = 0, month.start, set()
                org.snapshot = org.state = None  # the next grant reads the new month
        if org.rate >= self._min_rate and org.wants_more(month.start, now, self._seconds):
            self._start_grant(org_id, org, month, now)
        lease = org.usable(month.start, now)
        if lease is None or org.snapshot is None or org.state is None:
            return None
        state = org.state  # the month's counters as granted; the count is this process's (committed + pending)
        decision = decide_on_count(state, user_id, at, org.used + org.pending)
        if not decision.allowed:
            return None
        answer = _answer(org_id, CreditRequest(user_id, enquiry_id), decision, False)
        consumption = _consumption(org.snapshot.org, answer, at.isoformat(), self._event_type)
        item = _Item(LeasedAdmission(
            org_id=org_id, lease_id=lease.lease_id, month_start=month.start, month_end=month.end, consumed_at=at,
            enquiry_id=enquiry_id, user_id=user_id, org_allotment=answer.org_allotment,
            org_remaining=answer.org_remaining, event_id=consumption.event_id,
            envelope_json=consumption.envelope_json, message_key=org.snapshot.org.message_key), state,
            decision.org_used + 1)
        lease.pending += 1
        org.pending += 1
        org.remember(enquiry_id)
        try:
            stored = await self._writer.submit(item)
        except Exception as error:  # nothing of that group was written
            _log.debug("leased group commit failed (%s); deciding on the exact path", error)
            stored = False
        finally:
            lease.pending -= 1
            org.pending -= 1
        if not stored:
            org.recent.pop(enquiry_id, None)
        return answer if stored else None

    def _start_grant(self, org_id: str, org: _Org, month: Period, now: float) -> None:
        if org.granting or now < org.retry_at:
            return
        org.granting = True
        task = asyncio.ensure_future(self._grant(org_id, org, month))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _grant(self, org_id: str, org: _Org, month: Period) -> None:
        grant: LeaseGrant | None = None
        try:
            async with self._grant_slots, asyncio.timeout(GRANT_TIMEOUT_SECONDS):
                grant = await self._store.grant(org_id, month.start, month.end, self._holder,
                                                wanted=max(MIN_BLOCK, int(org.rate * self._seconds)),
                                                fraction=FRACTION, min_free=MIN_FREE, seconds=self._seconds)
        except Exception as error:  # no lease: the exact path decides
            _log.debug("lease for org %s not granted (%s)", org_id, error)
        finally:
            org.granting = False
        now = time.monotonic()
        if grant is not None:
            org.timezone = grant.snapshot.org.timezone
        if grant is None or calendar_month(month.start, grant.snapshot.org.timezone) != month:
            org.retry_at = now + RETRY_SECONDS
            if grant is not None:
                # the zone changed (its leases were revoked): this block is of the old zone's month, unusable,
                # and goes back when it expires; the next request computes the month in the new zone
                org.month = None
                org.retry_at = now
            return
        snapshot = grant.snapshot
        # NOTE: the grant moved the org's version: without this, the exact path's next batch of the org (one
        # that finds no lease left, say) lost its compare-and-set to our own grant and took the org for
        # contended, deciding it under the row lock for the next 2 s
        self._committer.remember(org_id, snapshot, month)
        org.leases = [lease for lease in org.leases if (not lease.dead and lease.deadline > now and lease.left() > 0)
                      or lease.pending]
        life = grant.seconds - max(0.5, self._seconds * SAFETY_SHARE)  # what the safety margin leaves
        org.leases.append(_Lease(grant.lease_id, month, grant.granted,
                                 now + life - random.uniform(0.0, max(0.0, life) * JITTER_SHARE)))
        org.snapshot = snapshot
        org.state = quota_state_of(snapshot, month)
        if org.used_month != month.start:
            org.used, org.used_month = 0, month.start
        org.used = max(org.used, snapshot.month.used if snapshot.month else 0)
        org.alerts_sent = set(snapshot.alerts_sent)

    async def _flush(self, items: Sequence[_Item]) -> list[bool]:
        seen: set[tuple[str, str]] = set()
        sending: list[_Item] = []
        last: dict[str, _Item] = {}  # per org, the admission decided last: its state holds the most use
        for item in items:
            key = (item.admission.org_id, item.admission.enquiry_id)
            if key not in seen:  # a second request for one enquiry is replayed by the exact path
                seen.add(key)
                sending.append(item)
                last[item.admission.org_id] = item
        alerts = self._alerts_due(last)
        try:
            result = await self._store.commit([item.admission for item in sending],
                                              [alert for due in alerts.values() for alert in due],
                                              topics.USAGE, topics.BILLING_EVENTS)
        except Exception:
            for org_id, due in alerts.items():  # nothing was written: they are still due
                if (org := self._orgs.get(org_id)) is not None:
                    org.alerts_sent.difference_update(alert.alert.key for alert in due)
            raise
        leases = {lease.lease_id: lease for item in sending
                  if (org := self._orgs.get(item.admission.org_id)) is not None for lease in org.leases}
        for lease_id, consumed in result.consumed.items():
            if lease_id in leases:
                leases[lease_id].consumed = max(leases[lease_id].consumed, consumed)
        for item in sending:
            lease = leases.get(item.admission.lease_id)
            if lease is not None and (item.admission.org_id, item.admission.enquiry_id) not in result.admitted \
                    and item.admission.lease_id not in result.live:
                lease.dead = True  # fenced: expired or revoked by the database clock
        for (org_id, month_start), used in result.used.items():
            org = self._orgs.get(org_id)
            if org is not None and org.used_month == month_start:
                org.used = max(org.used, used)
        for org_id, due in alerts.items():
            if due:
                self._alerts.send([alert.alert for alert in due], result.alerts_inserted, org_id, due[0].fired_at)
        sent = {id(item) for item in sending}
        return [id(item) in sent and (item.admission.org_id, item.admission.enquiry_id) in result.admitted
                for item in items]

    def _alerts_due(self, last: dict[str, _Item]) -> dict[str, list[LeasedAlert]]:
        """The alerts each org's latest admission calls for, not sent yet (level-triggered: once per group
        and org, on the state its last admission leaves; the alerts' unique key keeps each one once)."""
        due: dict[str, list[LeasedAlert]] = {}
        for org_id, item in last.items():
            org = self._orgs.get(org_id)
            if org is None or org.snapshot is None:
                continue
            at = item.admission.consumed_at
            new = [alert for alert in new_alerts(org.snapshot, item.decided_on, at, (), org_used=item.org_used)
                   if alert.key not in org.alerts_sent]
            if new:
                org.alerts_sent.update(alert.key for alert in new)
                due[org_id] = [LeasedAlert(org_id, alert, item.admission.message_key, at) for alert in new]
        return due

    async def aclose(self) -> None:
        """Stop deciding, and give back what this process's leases did not consume (after a crash instead,
        it comes back when they expire, or when the exact path revokes them before a refusal)."""
        for task in list(self._tasks):
            task.cancel()
        await self._writer.aclose()
        self._orgs.clear()
        try:
            await self._store.release(self._holder)
        except Exception as error:  # they expire by themselves
            _log.warning("could not give back the report-credit leases of %s on shutdown (%s)", self._holder, error)

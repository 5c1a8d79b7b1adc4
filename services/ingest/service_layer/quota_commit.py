"""How a decided batch of one org is made to stick: the org's state remembered by this process, one
compare-and-set write, and the retries (infrastructure the admission use case is given).

``BatchCommitter.commit(org, users, enquiries, decide)`` finds the org's state, calls ``decide(snapshot,
month, at)`` (the use case: pure, it returns its answers and the ``BatchWrite``), writes it with one
conditional statement and returns what was committed. It never decides anything itself:

- **Remembered state** (``_Known``): the state this process last read or wrote per org, valid while its
  version is current. A batch decided on it costs one round trip (the write); if anyone else wrote the org
  meanwhile the write matches no row and the batch is decided again on a fresh read. A batch decided on
  remembered state that admits nothing is decided again on a fresh read: refusals are only ever given on
  state read now.
- **Compare-and-set, then the row lock**: after a loss to another edge process, that org is decided under
  its row lock (``QuotaStore.decide_locked``) for ``CONTENTION_SECONDS``, so processes sharing a hot org
  serialise instead of invalidating each other. A concurrent duplicate enquiry, a moved time zone or a
  refused write on remembered state are decided again; ``MAX_ATTEMPTS`` losses in a row give up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Generic, TypeVar

from services.ingest.service_layer.quota_errors import QuotaContentionError
from services.ingest.service_layer.quota_ports import OrgBatchStore
from shared.adapters.clock import SystemClock
from shared.adapters.postgres.quota_store import (
    BatchWrite,
    DuplicateEnquiry,
    MonthRow,
    OrgSnapshot,
    QuotaStoreError,
    UnknownOrg,
)
from shared.domain.calendar import Period, calendar_month
from shared.domain.clock import Clock

MAX_ATTEMPTS = 20
# NOTE: after a compare-and-set lost to another edge process, that org's batches are decided under its
# row lock for this long: optimistic writes from several processes on one hot org would keep
# invalidating each other's reads, while the lock makes every batch succeed at the first attempt.
CONTENTION_SECONDS = 2.0

AnswersT = TypeVar("AnswersT")
Decide = Callable[[OrgSnapshot, Period, datetime], tuple[AnswersT, BatchWrite]]


class EventLoopClock:
    """The billing clock read from the event loop: the simulated clock reads PostgreSQL, so off the loop;
    the system clock is read in place (a thread hop would cost more than the read)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._blocks = not isinstance(clock, SystemClock)

    async def now(self) -> datetime:
        if self._blocks:
            return await asyncio.to_thread(self._clock.now)
        return self._clock.now()


class OrgNotConfigured(Exception):
    """The org has no plan and never started a trial; ``month`` is the month the batch was decided in."""

    def __init__(self, org_id: str, month: Period) -> None:
        super().__init__(org_id)
        self.month = month


@dataclass(frozen=True, slots=True)
class Committed(Generic[AnswersT]):
    """A batch's write, committed: on top of ``snapshot``, decided in ``month`` at ``at``."""

    answers: AnswersT
    write: BatchWrite
    snapshot: OrgSnapshot
    month: Period
    at: datetime
    inserted_alerts: frozenset[object]


class _TimezoneMoved(Exception):
    """The org's time zone changed since the month was computed: compute it again."""

    def __init__(self, timezone: str) -> None:
        super().__init__(timezone)
        self.timezone = timezone


@dataclass(frozen=True, slots=True)
class _Known:
    """The state of one org as this process last read or wrote it, valid while ``version`` is current.

    ``user_used`` holds the exact month counts of the users this process has seen at this version; with a
    per-user limit, a batch naming a user not in it is decided on a fresh read.
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
        """The org's rows once ``write`` is committed (at ``version``) on top of ``snapshot``.

        # NOTE: this mirrors what the store's statement did to the rows (``used + granted``, the user
        # grants, the trial delta, the alerts inserted): the cache follows the write, it decides nothing.
        """
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
                             row.top_ups if row else 0, (row.used if row else 0) + granted, row.leased if row else 0)
        org = replace(snapshot.org, version=version, trial_used=snapshot.org.trial_used + write.trial_delta)
        alerts = snapshot.alerts_sent | {alert.key for alert in write.alerts}
        return cls(replace(snapshot, org=org, month=month_row, user_used={}, prior={}, alerts_sent=alerts),
                   month.start, user_used)


class BatchCommitter:
    """Decides (through the given ``decide``) and commits batches of one org; see the module docstring."""

    def __init__(self, store: OrgBatchStore, clock: EventLoopClock,
                 observe_seconds: Callable[[str, float], None] | None = None) -> None:
        self._store = store
        self._clock = clock
        self._observe = observe_seconds or (lambda _path, _seconds: None)
        self._timezones: dict[str, str] = {}
        self._known: dict[str, _Known] = {}
        self._contended: dict[str, float] = {}
        self._forget_listeners: list[Callable[[str], None]] = []

    def forget(self, org_id: str, *, timezone: str | None = None) -> None:
        """An administrative write changed the org: decide its next batch on a fresh read."""
        self._known.pop(org_id, None)
        if timezone is not None:
            self._timezones[org_id] = timezone
        for listener in self._forget_listeners:
            listener(org_id)

    def on_forget(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(org_id)`` whenever an org's remembered state is dropped (e.g. its leases)."""
        self._forget_listeners.append(listener)

    def remember(self, org_id: str, snapshot: OrgSnapshot, month: Period) -> None:
        """``snapshot`` (of ``month``) was read under the org's row lock by another writer of this process (a
        lease grant, which moves the version): remember it unless what is remembered is newer, so that this
        process's next batch of the org does not lose its compare-and-set to this process's own grant."""
        known = self._known.get(org_id)
        if known is not None and known.snapshot.org.version >= snapshot.org.version:
            return
        self._known[org_id] = _Known(replace(snapshot, user_used={}, prior={}), month.start,
                                     dict(snapshot.user_used))

    def timezone_of(self, org_id: str) -> str | None:
        """The org's time zone as this process last read it; None before its first batch."""
        known = self._known.get(org_id)
        return known.snapshot.org.timezone if known is not None else self._timezones.get(org_id)

    async def commit(self, org_id: str, users: Sequence[str], enquiries: Sequence[str],
                     decide: Decide[AnswersT]) -> Committed[AnswersT]:
        """Decide the batch on the org's state and commit it; ``OrgNotConfigured`` when the org has no quota
        configuration, ``QuotaContentionError`` after ``MAX_ATTEMPTS`` lost attempts."""
        fresh = False  # True: decide on a fresh read (the remembered state was refused or is stale)
        for _attempt in range(MAX_ATTEMPTS):
            at = await self._clock.now()
            known = None if fresh else self._known.get(org_id)
            tz = known.snapshot.org.timezone if known is not None else self._timezones.get(org_id, "UTC")
            month = calendar_month(at, tz)
            started = time.perf_counter()
            if fresh or self._contended.get(org_id, 0.0) > time.monotonic():
                try:
                    snapshot, write, version, inserted, answers = await self._decide_locked(
                        org_id, month, at, users, enquiries, decide)
                except _TimezoneMoved as moved:
                    self._timezones[org_id] = moved.timezone
                    continue
                except UnknownOrg:
                    self._known.pop(org_id, None)
                    raise OrgNotConfigured(org_id, month) from None
                except DuplicateEnquiry:
                    continue
                self._observe("locked", time.perf_counter() - started)
                return self._settle(org_id, snapshot, month, at, users, write, version, inserted, answers, known)
            if known is not None and known.month_start == month.start and known.covers(users):
                snapshot, remembered = known.snapshot_for(users), True
            else:
                try:
                    snapshot = await self._store.load(org_id, month.start, users, enquiries)
                except UnknownOrg:
                    self._known.pop(org_id, None)
                    raise OrgNotConfigured(org_id, month) from None
                if snapshot.org.timezone != tz:
                    self._timezones[org_id] = snapshot.org.timezone
                    continue
                remembered = False
            answers, write = decide(snapshot, month, at)
            if remembered and not write.consumptions:
                fresh = True  # a refusal is only ever given on state read now
                continue
            try:
                if write.consumptions:
                    committed, inserted = await self._store.commit_batch(write)
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
                    inserted = await self._store.record_alerts(
                        org_id, at, write.alerts, write.alert_topic, write.message_key)
            except DuplicateEnquiry:
                fresh = True
                continue
            except QuotaStoreError:
                if not remembered:
                    raise
                fresh = True
                continue
            self._observe("remembered" if remembered else "read", time.perf_counter() - started)
            return self._settle(org_id, snapshot, month, at, users, write, version, inserted, answers, known)
        self._known.pop(org_id, None)
        raise QuotaContentionError(f"org {org_id}: the quota state kept changing; retry")

    async def _decide_locked(self, org_id: str, month: Period, at: datetime, users: Sequence[str],
                             enquiries: Sequence[str], decide: Decide[AnswersT]
                             ) -> tuple[OrgSnapshot, BatchWrite, int, Sequence[object], AnswersT]:
        decided: list[AnswersT] = []

        def decide_batch(snapshot: OrgSnapshot) -> BatchWrite:
            if calendar_month(at, snapshot.org.timezone) != month:
                raise _TimezoneMoved(snapshot.org.timezone)
            answers, write = decide(snapshot, month, at)
            decided.append(answers)
            return write

        snapshot, write, version, inserted = await self._store.decide_locked(
            org_id, month.start, users, enquiries, decide_batch)
        return snapshot, write, version, inserted, decided[-1]

    def _settle(self, org_id: str, snapshot: OrgSnapshot, month: Period, at: datetime, users: Sequence[str],
                write: BatchWrite, version: int, inserted: Sequence[object], answers: AnswersT,
                known: _Known | None) -> Committed[AnswersT]:
        """After the batch's write committed: remember the org's new state."""
        self._known[org_id] = _Known.after(snapshot, month, write, version, users, known)
        return Committed(answers, write, snapshot, month, at, frozenset(inserted))

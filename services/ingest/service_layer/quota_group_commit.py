"""The cross-org group commit: the batch writes of every org that are ready in one event-loop turn go to
PostgreSQL in ONE statement (one round trip, one commit, one WAL flush) instead of one each.

Infrastructure the batch committer is given (it wraps an ``OrgBatchStore`` and is one): ``commit_batch``
queues the write and answers with that write's own outcome. Nothing about a write changes:

- each write keeps its own compare-and-set: an org whose version moved writes nothing and gets ``None``
  (it is decided again alone, by the committer), the other orgs of the group commit;
- at most one write per org goes in a group (a second one waits for the next group), so the statement
  never touches one org's rows twice;
- the statement is atomic: when it fails (a CHECK backstop, a duplicate enquiry, a deadlock between two
  processes' groups, a lost connection), nothing was written and every write of the group is committed
  again alone, so each gets exactly the answer (or the error) it would have had without grouping;
- one statement is in flight at a time: a write that finds none in flight is sent at once, alone, as the
  plain ``commit_batch``; the writes that arrive while one is in flight gather into the next group (a busy
  edge writes bigger groups, an idle one pays nothing).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from services.ingest.service_layer.quota_ports import OrgBatchStore
from shared.adapters.postgres.quota_store import BatchWrite, NewAlert, OrgSnapshot

Outcome = tuple[int | None, list[uuid.UUID]]

MAX_GROUP = 200
_log = logging.getLogger("services.ingest.quota")


class GroupStore(OrgBatchStore, Protocol):
    """An ``OrgBatchStore`` that can also commit several orgs' writes in one statement."""

    async def commit_group(self, writes: Sequence[BatchWrite]) -> list[Outcome]: ...


@dataclass(slots=True)
class _Queued:
    write: BatchWrite
    future: asyncio.Future[Outcome]


class GroupCommit:
    """``OrgBatchStore`` over ``store`` whose ``commit_batch`` calls are grouped; see the module docstring."""

    def __init__(self, store: GroupStore, *, max_group: int = MAX_GROUP,
                 observe_group_size: Callable[[int], None] | None = None) -> None:
        self._store = store
        self._max_group = max_group
        self._observe = observe_group_size or (lambda _size: None)
        self._pending: list[_Queued] = []
        self._drainer: asyncio.Task[None] | None = None
        self._busy = False  # a statement is in flight (a lone write, or the drainer's group)

    async def load(self, org_id: str, month_start: datetime, users: Sequence[str],
                   enquiries: Sequence[str]) -> OrgSnapshot:
        return await self._store.load(org_id, month_start, users, enquiries)

    async def decide_locked(self, org_id: str, month_start: datetime, users: Sequence[str],
                            enquiries: Sequence[str], decide: Callable[[OrgSnapshot], BatchWrite]
                            ) -> tuple[OrgSnapshot, BatchWrite, int, list[uuid.UUID]]:
        return await self._store.decide_locked(org_id, month_start, users, enquiries, decide)

    async def record_alerts(self, org_id: str, at: datetime, alerts: Sequence[NewAlert], alert_topic: str,
                            message_key: str) -> list[uuid.UUID]:
        return await self._store.record_alerts(org_id, at, alerts, alert_topic, message_key)

    async def commit_batch(self, write: BatchWrite) -> Outcome:
        if self._busy:  # a statement is in flight: join the next group
            queued = _Queued(write, asyncio.get_running_loop().create_future())
            self._pending.append(queued)
            return await queued.future
        # NOTE: idle, the write goes at once in the caller's task: waiting a loop turn for company cost a
        # hot org (always a group of one) a third of its throughput in the benchmark
        self._busy = True
        self._observe(1)
        try:
            return await self._store.commit_batch(write)
        finally:
            self._busy = False
            self._drain_pending()

    def _drain_pending(self) -> None:
        if self._pending and not self._busy:
            self._busy = True
            self._drainer = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        try:
            while self._pending:
                group, self._pending = self._take(self._pending)
                self._observe(len(group))
                await self._commit(group)
        finally:
            self._busy = False
            self._drainer = None

    def _take(self, pending: list[_Queued]) -> tuple[list[_Queued], list[_Queued]]:
        """The next group (first write of each org, in arrival order, up to ``max_group``) and the rest."""
        group: list[_Queued] = []
        rest: list[_Queued] = []
        orgs: set[str] = set()
        for queued in pending:
            if len(group) < self._max_group and queued.write.org_id not in orgs:
                orgs.add(queued.write.org_id)
                group.append(queued)
            else:
                rest.append(queued)
        return group, rest

    async def _commit(self, group: list[_Queued]) -> None:
        if len(group) > 1:
            try:
                outcomes = await self._store.commit_group([queued.write for queued in group])
            except Exception as error:  # nothing was written: each write alone says which one was at fault
                _log.debug("group commit of %d orgs failed (%s); committing each alone", len(group), error)
            else:
                for queued, outcome in zip(group, outcomes, strict=True):
                    if not queued.future.done():
                        queued.future.set_result(outcome)
                return
        results = await asyncio.gather(*(self._store.commit_batch(queued.write) for queued in group),
                                       return_exceptions=True)
        for queued, result in zip(group, results, strict=True):
            if queued.future.done():
                continue
            if isinstance(result, BaseException):
                queued.future.set_exception(result)
            else:
                queued.future.set_result(result)

    async def aclose(self) -> None:
        if self._drainer is not None:
            self._drainer.cancel()
        for queued in self._pending:
            queued.future.cancel()
        self._pending = []

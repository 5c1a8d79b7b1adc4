"""The group commit's scheduling, over a recording store: which writes share a statement, and what each
caller gets back when the shared statement fails (the SQL itself is tested against PostgreSQL in
tests/integration/quota/test_group_commit.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import pytest

from services.ingest.service_layer.quota_group_commit import GroupCommit, Outcome
from shared.adapters.postgres.quota_store import BatchWrite, NewAlert, OrgSnapshot, QuotaStoreError

AT = datetime(2026, 1, 15, tzinfo=UTC)


def _write(org_id: str, version: int = 1) -> BatchWrite:
    return BatchWrite(org_id=org_id, seen_version=version, month_start=AT, month_end=AT, month_plan_reports=20,
                      consumed_at=AT, trial_delta=0, user_limit=None, user_grants={}, consumptions=[], alerts=[],
                      usage_topic="usage.v1", alert_topic="billing-events.v1", message_key=org_id)


class RecordingStore:
    """Answers version + 1 for every write after one loop turn (its round trip); ``refuse`` names orgs whose
    write fails (alone or grouped)."""

    def __init__(self, refuse: frozenset[str] = frozenset()) -> None:
        self.refuse = refuse
        self.statements: list[list[str]] = []

    async def commit_group(self, writes: Sequence[BatchWrite]) -> list[Outcome]:
        self.statements.append([write.org_id for write in writes])
        await asyncio.sleep(0)  # the round trip: other writes arrive meanwhile
        if any(write.org_id in self.refuse for write in writes):
            raise QuotaStoreError("backstop")
        return [(write.seen_version + 1, []) for write in writes]

    async def commit_batch(self, write: BatchWrite) -> Outcome:
        self.statements.append([write.org_id])
        await asyncio.sleep(0)
        if write.org_id in self.refuse:
            raise QuotaStoreError("backstop")
        return write.seen_version + 1, []

    async def load(self, org_id: str, month_start: datetime, users: Sequence[str],
                   enquiries: Sequence[str]) -> OrgSnapshot:
        raise AssertionError("not used")

    async def decide_locked(self, org_id: str, month_start: datetime, users: Sequence[str],
                            enquiries: Sequence[str], decide: Callable[[OrgSnapshot], BatchWrite]
                            ) -> tuple[OrgSnapshot, BatchWrite, int, list[uuid.UUID]]:
        raise AssertionError("not used")

    async def record_alerts(self, org_id: str, at: datetime, alerts: Sequence[NewAlert], alert_topic: str,
                            message_key: str) -> list[uuid.UUID]:
        raise AssertionError("not used")


class GatedStore(RecordingStore):
    """A lone write's round trip lasts until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def commit_batch(self, write: BatchWrite) -> Outcome:
        await self.gate.wait()
        return await super().commit_batch(write)


async def test_a_lone_write_is_the_plain_single_org_statement() -> None:
    store = RecordingStore()
    sizes: list[int] = []
    assert await GroupCommit(store, observe_group_size=sizes.append).commit_batch(_write("a", 4)) == (5, [])
    assert store.statements == [["a"]] and sizes == [1]


async def test_writes_ready_in_one_turn_share_a_statement_at_most_one_per_org_and_max_group() -> None:
    store = RecordingStore()
    group = GroupCommit(store, max_group=3)
    writes = [_write("x", 1), _write("a", 1), _write("b", 1), _write("a", 2), _write("c", 1), _write("d", 1)]
    outcomes = await asyncio.gather(*(group.commit_batch(write) for write in writes))
    assert outcomes == [(2, []), (2, []), (2, []), (3, []), (2, []), (2, [])]
    # x finds nothing in flight and goes at once, alone; the others gather behind it; a's second write and
    # the write past max_group wait for the next group, in arrival order
    assert store.statements == [["x"], ["a", "b", "c"], ["a", "d"]]


async def test_a_failed_group_commits_each_write_alone_and_only_the_faulty_one_fails() -> None:
    store = RecordingStore(refuse=frozenset({"b"}))
    group = GroupCommit(store)
    results = await asyncio.gather(*(group.commit_batch(_write(org)) for org in "xabc"), return_exceptions=True)
    assert results[0] == results[1] == results[3] == (2, [])
    assert isinstance(results[2], QuotaStoreError)
    assert store.statements == [["x"], ["a", "b", "c"], ["a"], ["b"], ["c"]]


async def test_writes_queued_while_a_group_is_in_flight_form_the_next_group() -> None:
    store = GatedStore()
    group = GroupCommit(store)
    first = asyncio.ensure_future(group.commit_batch(_write("a")))
    await asyncio.sleep(0)  # a alone is now in flight, held at the gate
    rest = [asyncio.ensure_future(group.commit_batch(_write(org))) for org in "bc"]
    await asyncio.sleep(0)
    store.gate.set()
    assert await asyncio.gather(first, *rest) == [(2, [])] * 3
    assert store.statements == [["a"], ["b", "c"]]


async def test_a_cancelled_caller_does_not_stop_the_others_of_its_group() -> None:
    store = RecordingStore()
    group = GroupCommit(store)
    first = asyncio.ensure_future(group.commit_batch(_write("x")))
    doomed = asyncio.ensure_future(group.commit_batch(_write("a")))
    kept = asyncio.ensure_future(group.commit_batch(_write("b")))
    await asyncio.sleep(0)  # x is in flight, a and b are queued
    doomed.cancel()
    assert await kept == (2, []) and await first == (2, [])
    with pytest.raises(asyncio.CancelledError):
        await doomed


async def test_an_idle_write_goes_at_once_without_waiting_a_loop_turn() -> None:
    store = RecordingStore()
    group = GroupCommit(store)
    task = asyncio.ensure_future(group.commit_batch(_write("a")))
    await asyncio.sleep(0)  # one turn: the write's own task has sent it
    assert store.statements == [["a"]]
    assert await task == (2, [])


async def test_closing_cancels_the_writes_still_queued() -> None:
    store = RecordingStore()
    group = GroupCommit(store)
    first = asyncio.ensure_future(group.commit_batch(_write("x")))
    queued = asyncio.ensure_future(group.commit_batch(_write("a")))
    await asyncio.sleep(0)
    await group.aclose()
    assert await first == (2, [])
    with pytest.raises(asyncio.CancelledError):
        await queued

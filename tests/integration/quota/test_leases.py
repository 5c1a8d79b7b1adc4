"""Report-credit leases against real PostgreSQL: blocks of an org's month reserved by one edge process,
admissions decided from memory and written by the pipelined group commit, and what happens when a holder
dies, a lease expires, the month turns, a top-up arrives or a per-user limit is set.

Part one drives ``LeaseStore`` with hand-built admissions (the rows each statement must leave are counted
by hand); part two goes through real edge processes (``python -m services.ingest``), one of them killed
with SIGKILL while it holds leases.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import uuid
from collections import Counter

import pytest
import sqlalchemy as sa

from services.ingest.service_layer.quota_alerts import event_id
from shared.adapters.postgres.quota_lease_store import LeasedAdmission, LeaseGrant, LeaseStore
from shared.adapters.postgres.quota_store import QuotaStore
from shared.config import Settings
from shared.domain.calendar import Period, calendar_month
from shared.errors import DatabaseUnavailableError
from tests.integration.quota.conftest import (
    LEASE_SECONDS,
    START,
    EdgeServer,
    admin,
    counters,
    leased_settings,
    new_org,
    use_credits,
)

pytestmark = pytest.mark.integration

MONTH = calendar_month(START, "UTC")
FEBRUARY = calendar_month(MONTH.end, "UTC")


@pytest.fixture(scope="module")
def quota_settings(settings):  # type: ignore[no-untyped-def]
    return leased_settings(settings)


async def _org(store: QuotaStore, reports: int = 1000, *, user_limit: int | None = None,
               month: Period = MONTH) -> str:
    org_id = new_org()
    changes: dict[str, object] = {"plan_id": "Ultimate", "plan_monthly_reports": reports}
    if user_limit is not None:
        changes["per_user_monthly_limit"] = user_limit
    await store.configure(org_id, changes, month=(month.start, month.end), month_plan_reports=reports)
    return org_id


async def _grant(leases: LeaseStore, org_id: str, wanted: int = 50, *, month: Period = MONTH,
                 seconds: float = 30.0) -> LeaseGrant | None:
    return await leases.grant(org_id, month.start, month.end, "test:1", wanted=wanted, fraction=8, min_free=256,
                              seconds=seconds)


def _admission(grant: LeaseGrant, enquiry: str, *, month: Period = MONTH, user: str = "u1") -> LeasedAdmission:
    return LeasedAdmission(
        org_id=grant.org_id, lease_id=grant.lease_id, month_start=month.start, month_end=month.end,
        consumed_at=START, enquiry_id=enquiry, user_id=user, org_allotment=1000, org_remaining=0,
        event_id=event_id("report", grant.org_id, enquiry), message_key=grant.org_id,
        envelope_json=f'{{"enquiry": "{enquiry}", "payload": {{"customer_id": "{grant.org_id}"}}}}')


def _month_row(engine: sa.Engine, org_id: str, month: Period = MONTH) -> tuple[int, int]:
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT used, leased FROM quota_org_months WHERE org_id = :o AND month_start = :m"),
                           {"o": org_id, "m": month.start}).one()
    return int(row[0]), int(row[1])


# --- part one: the store ---------------------------------------------------------------------------------


async def test_a_lease_reserves_a_block_and_admissions_under_it_move_it_to_used_in_one_statement(
        stores: tuple[QuotaStore, LeaseStore], engine: sa.Engine) -> None:
    store, leases = stores
    first, second = await _org(store), await _org(store)
    grants = [await _grant(leases, first), await _grant(leases, second, wanted=500)]
    assert [g.granted if g else None for g in grants] == [50, 125]  # 1,000 free / 8 caps the second
    one, two = grants[0], grants[1]
    assert one is not None and two is not None
    assert _month_row(engine, first) == (0, 50)

    done = await leases.commit([_admission(one, "a"), _admission(one, "b", user="u2"), _admission(two, "c")], [],
                               "usage.v1", "billing-events.v1")

    assert done.admitted == {(first, "a"), (first, "b"), (second, "c")}
    assert done.consumed == {one.lease_id: 2, two.lease_id: 1}
    assert done.used == {(first, MONTH.start): 2, (second, MONTH.start): 1}
    assert _month_row(engine, first) == (2, 48) and _month_row(engine, second) == (1, 124)
    assert counters(engine, first)["consumptions"] == 2


async def test_an_enquiry_stored_before_is_not_admitted_again_and_moves_no_counter(
        stores: tuple[QuotaStore, LeaseStore], engine: sa.Engine) -> None:
    store, leases = stores
    org_id = await _org(store)
    grant = await _grant(leases, org_id)
    assert grant is not None
    await leases.commit([_admission(grant, "retry-me")], [], "usage.v1", "billing-events.v1")

    again = await leases.commit([_admission(grant, "retry-me"), _admission(grant, "new")], [],
                                "usage.v1", "billing-events.v1")

    assert again.admitted == {(org_id, "new")}
    assert again.consumed == {grant.lease_id: 2}
    assert _month_row(engine, org_id) == (2, 48)
    assert counters(engine, org_id)["usage_events"] == 2


async def test_a_late_write_after_the_lease_expired_by_the_database_clock_writes_nothing(
        stores: tuple[QuotaStore, LeaseStore], engine: sa.Engine) -> None:
    store, leases = stores
    org_id = await _org(store)
    grant = await _grant(leases, org_id, seconds=0.6)
    assert grant is not None
    await asyncio.sleep(1.0)

    late = await leases.commit([_admission(grant, "late")], [], "usage.v1", "billing-events.v1")

    assert late.admitted == frozenset() and late.live == frozenset()
    assert _month_row(engine, org_id) == (0, 50)
    # the next grant reclaims the expired lease: its 50 reports go back before the new block is taken
    renewed = await _grant(leases, org_id)
    assert renewed is not None
    assert _month_row(engine, org_id) == (0, 50)
    assert [row["lease_id"] for row in await leases.open_leases(org_id)] == [renewed.lease_id]


async def test_a_top_up_while_a_lease_is_out_revokes_it_and_the_new_allotment_is_all_usable(
        stores: tuple[QuotaStore, LeaseStore], engine: sa.Engine) -> None:
    store, leases = stores
    org_id = await _org(store)
    grant = await _grant(leases, org_id)
    assert grant is not None
    await leases.commit([_admission(grant, "before")], [], "usage.v1", "billing-events.v1")

    await store.top_up(org_id, f"t-{uuid.uuid4().hex}", 500, (MONTH.start, MONTH.end), "ops", START)

    fenced = await leases.commit([_admission(grant, "after")], [], "usage.v1", "billing-events.v1")
    assert fenced.admitted == frozenset()
    assert _month_row(engine, org_id) == (1, 0)  # the lease's 49 unused reports went back
    bigger = await _grant(leases, org_id, wanted=10_000)
    assert bigger is not None and bigger.granted == (1000 + 500 - 1) // 8


async def test_leases_are_keyed_by_month_and_nothing_carries_over_the_boundary(
        stores: tuple[QuotaStore, LeaseStore], engine: sa.Engine) -> None:
    store, leases = stores
    org_id = await _org(store)
    january = await _grant(leases, org_id)
    assert january is not None

    crossing = await leases.commit([_admission(january, "feb-1", month=FEBRUARY)], [], "usage.v1",
                                   "billing-events.v1")

    assert crossing.admitted == frozenset()
    february = await _grant(leases, org_id, month=FEBRUARY)
    assert february is not None and february.granted == 50
    assert _month_row(engine, org_id, FEBRUARY) == (0, 50) and _month_row(engine, org_id) == (0, 50)


async def test_no_lease_for_an_org_with_a_per_user_limit_or_too_little_left(
        stores: tuple[QuotaStore, LeaseStore]) -> None:
    store, leases = stores
    assert await _grant(leases, await _org(store, user_limit=5)) is None
    assert await _grant(leases, await _org(store, reports=100)) is None


async def test_the_check_constraint_holds_used_plus_leased_to_the_allotment(
        stores: tuple[QuotaStore, LeaseStore], engine: sa.Engine) -> None:
    store, leases = stores
    org_id = await _org(store, reports=300)
    assert await _grant(leases, org_id, wanted=1000) is not None  # 300 // 8 = 37
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.text("UPDATE quota_org_months SET used = 264 WHERE org_id = :o"), {"o": org_id})


async def test_a_group_statement_waits_for_the_org_lock_before_touching_the_month_row(
        stores: tuple[QuotaStore, LeaseStore], engine: sa.Engine) -> None:
    """The exact path locks the org row, then its month and user rows; a group statement that took the month
    row first deadlocked with it (a 503 for the exact path's batch). The group must queue on the org."""
    store, leases = stores
    org_id = await _org(store)
    grant = await _grant(leases, org_id)
    assert grant is not None
    with engine.connect() as exact_path:
        exact_path.execute(sa.text("SELECT 1 FROM quota_orgs WHERE org_id = :o FOR UPDATE"), {"o": org_id})
        writing = asyncio.ensure_future(leases.commit([_admission(grant, "queued")], [], "usage.v1",
                                                      "billing-events.v1"))
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            with engine.connect() as probe:
                waiting = probe.execute(sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE '%%orgs AS MATERIALIZED%%'")).scalar_one()
            if waiting:
                break
            assert not writing.done(), "the group statement did not wait for the org's lock"
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        with engine.connect() as probe:  # the month row is still free for the exact path
            probe.execute(sa.text("SELECT 1 FROM quota_org_months WHERE org_id = :o FOR UPDATE NOWAIT"),
                          {"o": org_id})
            probe.rollback()
        exact_path.commit()
    done = await writing
    assert done.admitted == {(org_id, "queued")}
    assert _month_row(engine, org_id) == (1, 49)


async def test_a_grant_holds_the_org_lock_only_while_its_statements_run_not_while_its_event_loop_is_busy(
        stores: tuple[QuotaStore, LeaseStore], engine: sa.Engine) -> None:
    """A grant sent one round trip per statement held the org's row lock across every turn of its (busy)
    event loop, and every group statement with an admission of that org waited that long: the p99's tail at
    1,000 requests/s. Sent as one query, the server runs it to its commit without waiting for the loop."""
    store, leases = stores
    org_id = await _org(store)
    granting = asyncio.ensure_future(_grant(leases, org_id))
    blocked: list[float] = []
    done = threading.Event()

    def probe() -> None:  # what a group statement's FOR SHARE of the org would wait, polled every 5 ms
        with engine.connect() as conn:
            while not done.is_set():
                try:
                    conn.execute(sa.text("SELECT 1 FROM quota_orgs WHERE org_id = :o FOR SHARE NOWAIT"),
                                 {"o": org_id})
                except sa.exc.OperationalError:
                    blocked.append(0.005)
                conn.rollback()
                time.sleep(0.005)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        while not granting.done():
            await asyncio.sleep(0)
            time.sleep(0.05)  # the event loop is busy with something else for 50 ms at every turn
        grant = await granting
    finally:
        done.set()
        prober.join()
    assert grant is not None and grant.granted == 50
    assert sum(blocked) < 0.05, f"the org's row was locked for about {sum(blocked):.2f} s"


async def test_a_grant_stuck_behind_a_long_transaction_gives_up_after_a_second_and_leaves_nothing(
        stores: tuple[QuotaStore, LeaseStore], engine: sa.Engine) -> None:
    """Review: a process lets two grants run at once, so a grant must not wait for as long as another transaction
    holds its org's rows. It gives up after 1 s (lock_timeout), rolls back what it did, and the pooled
    connection serves the next grant."""
    store, leases = stores
    org_id = await _org(store)
    expiring = await _grant(leases, org_id, seconds=0.6)
    assert expiring is not None
    await asyncio.sleep(1.0)  # expired by the database clock: the next grant reclaims it first
    with engine.connect() as admin:  # a long write holding the org's month row
        admin.execute(sa.text("SELECT 1 FROM quota_org_months WHERE org_id = :o FOR UPDATE"), {"o": org_id})
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailableError):
            await asyncio.wait_for(_grant(leases, org_id), 10)  # (it waited as long as the lock was held)
        waited = time.monotonic() - started
        admin.rollback()
    assert 0.9 <= waited < 5.0
    assert _month_row(engine, org_id) == (0, 50)  # the reclaim of the expired lease was rolled back too
    again = await _grant(leases, org_id)
    assert again is not None and again.granted == 50 and _month_row(engine, org_id) == (0, 50)


# --- part two: real edge processes -----------------------------------------------------------------------


async def _burst(url: str, org: str, count: int, tag: str) -> list[int]:
    responses = await use_credits(url, org, [(f"user-{i % 20}", f"{tag}-{i}") for i in range(count)])
    return [r.status_code for r in responses]


def _leases(engine: sa.Engine, org_id: str) -> list[tuple[str, int, int, bool]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT holder, granted, consumed, returned_at IS NOT NULL FROM quota_leases"
                                    " WHERE org_id = :o ORDER BY granted_at"), {"o": org_id}).all()
    return [tuple(row) for row in rows]  # type: ignore[misc]


async def _warm(url: str, org: str, tag: str) -> None:
    """A few rounds of requests: the first teaches the edge the org's zone, the next ones take a lease."""
    for round_no in range(4):
        assert set(await _burst(url, org, 20, f"{tag}{round_no}")) == {200}
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # a grant the rounds started finishes before the test goes on (a loaded machine)


async def test_a_busy_org_is_admitted_under_leases_and_every_admission_is_recorded_once(
        edge: EdgeServer, engine: sa.Engine) -> None:
    org = new_org()
    assert (await admin(edge.url, "PUT", f"/v1/quota/orgs/{org}/plan", {"plan": "Ultimate"})).status_code == 200
    await _warm(edge.url, org, "w")

    statuses = await _burst(edge.url, org, 300, "busy")

    assert Counter(statuses) == {200: 300}
    leases = _leases(engine, org)
    assert leases and sum(consumed for _h, _g, consumed, _r in leases) > 0
    state = counters(engine, org)
    assert [m[1] for m in state["months"]] == [380]
    assert state["consumptions"] == 380 and state["usage_events"] == 380
    view = (await admin(edge.url, "GET", f"/v1/quota/orgs/{org}")).json()
    assert (view["used"], view["remaining"]) == (380, 620)


async def test_two_edges_with_leases_on_one_org_admit_exactly_the_allotment(
        edge: EdgeServer, quota_settings: Settings, engine: sa.Engine) -> None:
    org = new_org()
    assert (await admin(edge.url, "PUT", f"/v1/quota/orgs/{org}/plan", {"plan": "Basic"})).status_code == 200
    assert (await admin(edge.url, "POST", f"/v1/quota/orgs/{org}/top-ups", {"reports": 900})).status_code == 200
    second = EdgeServer(quota_settings).start()
    try:
        await asyncio.gather(_warm(edge.url, org, "a"), _warm(second.url, org, "b"))
        first_half, second_half = await asyncio.gather(_burst(edge.url, org, 500, "x"),
                                                       _burst(second.url, org, 500, "y"))
    finally:
        second.stop()
    statuses = Counter(first_half + second_half)
    assert statuses == {200: 840, 402: 160}  # 1,000 - 160 admitted while warming up
    assert len({holder for holder, *_rest in _leases(engine, org)}) == 2
    state = counters(engine, org)
    assert [m[1] for m in state["months"]] == [1000]
    assert state["consumptions"] == 1000 and state["usage_events"] == 1000


async def test_an_edge_killed_while_holding_leases_over_admits_nothing_and_its_rest_comes_back(
        edge: EdgeServer, quota_settings: Settings, engine: sa.Engine) -> None:
    org = new_org()
    assert (await admin(edge.url, "PUT", f"/v1/quota/orgs/{org}/plan", {"plan": "Basic"})).status_code == 200
    assert (await admin(edge.url, "POST", f"/v1/quota/orgs/{org}/top-ups", {"reports": 900})).status_code == 200
    doomed = EdgeServer(quota_settings).start()
    await _warm(doomed.url, org, "d")
    held = [lease for lease in _leases(engine, org) if not lease[3]]
    assert held, "the edge took no lease"
    admitted_by_doomed = 80
    process = doomed._process
    assert process is not None
    process.send_signal(signal.SIGKILL)  # no shutdown: its leases stay open in PostgreSQL
    process.wait()
    doomed._process = None
    state = counters(engine, org)
    assert [m[1] for m in state["months"]] == [admitted_by_doomed] and state["consumptions"] == admitted_by_doomed

    # the survivor gets every report the dead edge did not use: the exact path revokes its lease rather
    # than refuse while reports sit in it
    statuses = Counter(await _burst(edge.url, org, 1000, "rest"))

    assert statuses == {200: 1000 - admitted_by_doomed, 402: admitted_by_doomed}
    state = counters(engine, org)
    assert [m[1] for m in state["months"]] == [1000] and state["consumptions"] == 1000
    assert all(returned for _holder, _granted, _consumed, returned in _leases(engine, org))
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT leased FROM quota_org_months WHERE org_id = :o"), {"o": org}
                            ).scalar_one() == 0


async def test_a_dead_edges_lease_comes_back_by_itself_once_it_expires(
        edge: EdgeServer, quota_settings: Settings, engine: sa.Engine) -> None:
    org = new_org()
    assert (await admin(edge.url, "PUT", f"/v1/quota/orgs/{org}/plan", {"plan": "Ultimate"})).status_code == 200
    doomed = EdgeServer(quota_settings).start()
    await _warm(doomed.url, org, "d")
    process = doomed._process
    assert process is not None
    process.send_signal(signal.SIGKILL)
    process.wait()
    doomed._process = None
    dead = {lease_id for lease_id, in _open_lease_ids(engine, org)}
    assert dead
    await asyncio.sleep(LEASE_SECONDS + 0.5)

    await _warm(edge.url, org, "s")  # the survivor's grant reclaims expired leases first

    open_now = {lease_id for lease_id, in _open_lease_ids(engine, org)}
    assert not dead & open_now
    state = counters(engine, org)
    assert [m[1] for m in state["months"]] == [160] and state["consumptions"] == 160
    with engine.connect() as conn:
        leased, outstanding = conn.execute(sa.text(
            "SELECT m.leased, (SELECT coalesce(sum(granted - consumed), 0) FROM quota_leases l"
            " WHERE l.org_id = m.org_id AND l.returned_at IS NULL) FROM quota_org_months m WHERE m.org_id = :o"),
            {"o": org}).one()
    assert leased == outstanding  # what the month holds as leased is exactly what open leases have left


def _open_lease_ids(engine: sa.Engine, org_id: str) -> list[tuple[uuid.UUID]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(  # type: ignore[misc]
            sa.text("SELECT lease_id FROM quota_leases WHERE org_id = :o AND returned_at IS NULL"), {"o": org_id})]



async def test_an_edge_shutting_down_gives_back_what_its_leases_did_not_consume(
        edge: EdgeServer, quota_settings: Settings, engine: sa.Engine) -> None:
    org = new_org()
    assert (await admin(edge.url, "PUT", f"/v1/quota/orgs/{org}/plan", {"plan": "Ultimate"})).status_code == 200
    leaving = EdgeServer(quota_settings).start()
    await _warm(leaving.url, org, "l")
    assert _open_lease_ids(engine, org)

    leaving.stop()  # SIGTERM: a graceful shutdown

    assert _open_lease_ids(engine, org) == []
    with engine.connect() as conn:
        used, leased = conn.execute(sa.text("SELECT used, leased FROM quota_org_months WHERE org_id = :o"),
                                    {"o": org}).one()
    assert (used, leased) == (80, 0)

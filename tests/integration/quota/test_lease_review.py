"""Adversarial review of the report-credit leases (issue 18): the cases the lease tests leave out.

Part one drives ``LeaseStore`` against real PostgreSQL (an administrative revocation that holds the lease
rows while a group statement waits on them, a late write under a revoked lease); part two goes through real
edge processes (a lease left open by a holder that will never come back, a per-user limit set through one
edge while another holds leases).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from services.ingest.service_layer.quota_alerts import event_id
from shared.adapters.clock import DatabaseClock
from shared.adapters.postgres.pool import make_pool
from shared.adapters.postgres.quota_lease_store import LeasedAdmission, LeaseGrant, LeaseStore
from shared.adapters.postgres.quota_store import REVOKE_LEASES_SQL, QuotaStore
from shared.config import Settings
from shared.domain.calendar import calendar_month
from tests.integration.quota.conftest import (
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


@pytest.fixture(scope="module")
def quota_settings(settings):  # type: ignore[no-untyped-def]
    return leased_settings(settings)


async def _org(store: QuotaStore, reports: int = 1000) -> str:
    org_id = new_org()
    await store.configure(org_id, {"plan_id": "Ultimate", "plan_monthly_reports": reports},
                          month=(MONTH.start, MONTH.end), month_plan_reports=reports)
    return org_id


async def _grant(store: LeaseStore, org_id: str, *, holder: str = "review:1", seconds: float = 30.0
                 ) -> LeaseGrant:
    grant = await store.grant(org_id, MONTH.start, MONTH.end, holder, wanted=50, fraction=8, min_free=256,
                              seconds=seconds)
    assert grant is not None
    return grant


def _admission(grant: LeaseGrant, enquiry: str) -> LeasedAdmission:
    return LeasedAdmission(
        org_id=grant.org_id, lease_id=grant.lease_id, month_start=MONTH.start, month_end=MONTH.end,
        consumed_at=START, enquiry_id=enquiry, user_id="u1", org_allotment=1000, org_remaining=0,
        event_id=event_id("report", grant.org_id, enquiry), message_key=grant.org_id,
        envelope_json=f'{{"enquiry": "{enquiry}", "payload": {{"customer_id": "{grant.org_id}"}}}}')


def _month_row(engine: sa.Engine, org_id: str) -> tuple[int, int]:
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT used, leased FROM quota_org_months WHERE org_id = :o AND month_start = :m"),
                           {"o": org_id, "m": MONTH.start}).one()
    return int(row[0]), int(row[1])


def _waiting_on_a_lock(engine: sa.Engine, fragment: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE :q"),
            {"q": f"%{fragment}%"}).scalar_one())


# --- part one: the store ---------------------------------------------------------------------------------


async def test_a_group_statement_waiting_on_a_revocation_in_flight_writes_nothing_under_the_revoked_lease(
        stores: tuple[QuotaStore, LeaseStore], engine: sa.Engine) -> None:
    """An admin write (plan, limit, top-up) revokes the org's leases in its transaction. A group statement
    that started before it committed and waits on the lease rows must be fenced once it gets them (its
    snapshot still shows the lease live): nothing under the lease is stored, no counter moves."""
    store, lease_store = stores
    org_id = await _org(store)
    grant = await _grant(lease_store, org_id)
    assert _month_row(engine, org_id) == (0, 50)
    with engine.connect() as admin_conn:
        admin_conn.execute(sa.text("SELECT 1 FROM quota_orgs WHERE org_id = :o FOR UPDATE"), {"o": org_id})
        admin_conn.execute(sa.text(REVOKE_LEASES_SQL.format(only="").replace("%(org_id)s", ":o")), {"o": org_id})
        writing = asyncio.ensure_future(lease_store.commit([_admission(grant, "in-flight")], [], "usage.v1",
                                                           "billing-events.v1"))
        deadline = time.monotonic() + 30
        while _waiting_on_a_lock(engine, "FROM quota_leases l") == 0:  # the statement holds its snapshot
            assert time.monotonic() < deadline, "the group statement never waited on the lease rows"
            assert not writing.done(), "the group statement did not wait for the revocation"
            await asyncio.sleep(0.05)
        admin_conn.commit()
    result = await writing

    assert result.admitted == frozenset() and result.live == frozenset()
    assert _month_row(engine, org_id) == (0, 0)
    assert counters(engine, org_id)["consumptions"] == 0
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT consumed FROM quota_leases WHERE lease_id = :l"),
                            {"l": grant.lease_id}).scalar_one() == 0


async def test_a_late_write_under_a_revoked_lease_cannot_spend_another_holders_reservation(
        stores: tuple[QuotaStore, LeaseStore], engine: sa.Engine) -> None:
    """Holder A's lease is revoked (the rest went back) and holder B takes a new one; A's late group must
    not move B's reserved reports to used (leased would no longer match what open leases hold)."""
    store, lease_store = stores
    org_id = await _org(store)
    first = await _grant(lease_store, org_id, holder="a:1")
    assert await lease_store.revoke(org_id) == 1
    second = await _grant(lease_store, org_id, holder="b:1")

    late = await lease_store.commit([_admission(first, "late-a")], [], "usage.v1", "billing-events.v1")
    on_time = await lease_store.commit([_admission(second, "b-1")], [], "usage.v1", "billing-events.v1")

    assert late.admitted == frozenset() and on_time.admitted == frozenset({(org_id, "b-1")})
    assert _month_row(engine, org_id) == (1, second.granted - 1)


# --- part two: real edge processes -----------------------------------------------------------------------


async def _burst(url: str, org: str, count: int, tag: str, users: int = 20) -> list[int]:
    responses = await use_credits(url, org, [(f"user-{i % users}", f"{tag}-{i}") for i in range(count)])
    return [r.status_code for r in responses]


async def _warm(url: str, org: str, tag: str) -> None:
    """Rounds of requests: the first teaches the edge the org's zone, the next ones take a lease."""
    for round_no in range(4):
        responses = await use_credits(url, org, [(f"user-{i}", f"{tag}{round_no}-{i}") for i in range(20)])
        assert {r.status_code for r in responses} == {200}, [r.text for r in responses if r.status_code != 200]
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # a grant the rounds started finishes before the test goes on (a loaded machine)


def _open_leases(engine: sa.Engine, org_id: str) -> list[tuple[datetime, str, int, int]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT month_start, holder, granted, consumed FROM quota_leases"
                                    " WHERE org_id = :o AND returned_at IS NULL ORDER BY granted_at"),
                            {"o": org_id}).all()
    return [tuple(row) for row in rows]  # type: ignore[misc]


async def test_credits_stranded_in_a_lease_whose_holder_never_returns_are_all_admitted_before_it_expires(
        edge: EdgeServer, quota_settings: Settings, engine: sa.Engine) -> None:
    """A holder died minutes into an hour-long lease: the org must still get every report it paid for
    (no refusal while reports sit in a lease nobody will use), and never one more."""
    org = new_org()
    assert (await admin(edge.url, "PUT", f"/v1/quota/orgs/{org}/plan", {"plan": "Ultimate"})).status_code == 200
    pool = make_pool(quota_settings, min_size=1, max_size=2)
    await pool.open(wait=True)
    try:
        stranded = await LeaseStore(pool).grant(org, MONTH.start, MONTH.end, "dead-host:1", wanted=100,
                                                fraction=8, min_free=256, seconds=3600)
    finally:
        await pool.close()
    assert stranded is not None and stranded.granted == 100

    statuses = Counter(await _burst(edge.url, org, 1100, "all"))

    assert statuses == {200: 1000, 402: 100}
    state = counters(engine, org)
    assert [m[1] for m in state["months"]] == [1000] and state["consumptions"] == 1000
    assert state["usage_events"] == 1000
    assert _month_row(engine, org) == (1000, 0)


async def test_a_per_user_limit_set_through_one_edge_binds_another_edge_that_holds_leases(
        edge: EdgeServer, quota_settings: Settings, engine: sa.Engine) -> None:
    org = new_org()
    assert (await admin(edge.url, "PUT", f"/v1/quota/orgs/{org}/plan", {"plan": "Ultimate"})).status_code == 200
    holder = EdgeServer(quota_settings).start()
    try:
        await _warm(holder.url, org, "w")  # 80 reports, 4 per user; the holder now decides from memory
        assert [lease for lease in _open_leases(engine, org) if lease[3] > 0 or lease[2] > 0]
        assert (await admin(edge.url, "PUT", f"/v1/quota/orgs/{org}/user-limit", {"limit": 6})).status_code == 200

        statuses = Counter(await _burst(holder.url, org, 200, "after"))
    finally:
        holder.stop()

    assert statuses == {200: 40, 429: 160}  # 2 more for each of the 20 users
    with engine.connect() as conn:
        per_user = dict(conn.execute(sa.text("SELECT user_id, used FROM quota_user_months WHERE org_id = :o"),
                                     {"o": org}).all())
    assert per_user == {f"user-{i}": 6 for i in range(20)}
    assert counters(engine, org)["consumptions"] == 120


async def test_after_a_zone_change_the_busy_org_is_decided_under_leases_of_its_new_month_again(
        edge: EdgeServer, engine: sa.Engine) -> None:
    """A zone change revokes the org's leases; the lease path must take leases of the month in the NEW zone
    (not keep asking for blocks of the old zone's month, which it can never use)."""
    org = new_org()
    assert (await admin(edge.url, "PUT", f"/v1/quota/orgs/{org}/plan", {"plan": "Ultimate"})).status_code == 200
    await _warm(edge.url, org, "utc")
    response = await admin(edge.url, "PUT", f"/v1/quota/orgs/{org}/plan",
                           {"plan": "Ultimate", "timezone": "Asia/Tokyo"})
    assert response.status_code == 200, response.text
    tokyo = calendar_month(START, "Asia/Tokyo")
    with engine.connect() as conn:
        changed_at = conn.execute(sa.text("SELECT now()")).scalar_one()

    def leases_since_the_change() -> dict[datetime, tuple[int, int]]:
        with engine.connect() as conn:
            return {month: (granted, consumed) for month, granted, consumed in conn.execute(sa.text(
                "SELECT month_start, sum(granted)::int, sum(consumed)::int FROM quota_leases WHERE org_id = :o"
                " AND granted_at > :t GROUP BY month_start"), {"o": org, "t": changed_at}).all()}

    # traffic until a lease taken since the change has been used (the lease path pauses 2 s after a grant that
    # found the zone changed; a loaded machine may need more rounds), bounded
    deadline = time.monotonic() + 90
    round_no = 0
    while leases_since_the_change().get(tokyo.start, (0, 0))[1] == 0 and time.monotonic() < deadline:
        assert set(await _burst(edge.url, org, 20, f"tokyo{round_no}")) == {200}
        round_no += 1
        await asyncio.sleep(0.25)
    by_month = leases_since_the_change()
    # (granted, consumed) of the leases taken since the change, by the month they reserve
    assert by_month.get(tokyo.start, (0, 0))[1] > 0, f"leases taken since the change: {by_month}"
    # a grant already on its way when the zone changed may still reserve a block of the old month (it comes
    # back at expiry); nothing may be decided under one
    assert all(consumed == 0 for month, (_granted, consumed) in by_month.items() if month != tokyo.start), by_month


async def test_the_first_leased_admissions_of_a_new_month_count_that_months_use_not_the_last_ones(
        edge: EdgeServer, billing_clock: DatabaseClock, engine: sa.Engine) -> None:
    """January ends with 660 of 1,000 used under leases; on February 1st the org has used nothing. Its
    February answers must say so (org_remaining near 1,000) and no February threshold alert may fire for
    February's first 90 reports (the threshold is 50 %: 500 reports; "on track" needs 10 %: 100)."""
    org = new_org()
    assert (await admin(edge.url, "PUT", f"/v1/quota/orgs/{org}/plan", {"plan": "Ultimate"})).status_code == 200
    assert (await admin(edge.url, "PUT", f"/v1/quota/orgs/{org}/alert-thresholds",
                        {"thresholds_percent": [50]})).status_code == 200
    await _warm(edge.url, org, "jan")
    responses = await use_credits(edge.url, org, [(f"user-{i % 20}", f"jan-busy-{i}") for i in range(500)])
    assert {r.status_code for r in responses} == {200}, [r.text for r in responses if r.status_code != 200][:3]
    await _warm(edge.url, org, "jan-after")  # a lease taken or written after the burst: the edge knows 580+
    billing_clock.advance(datetime(2026, 2, 1, 0, 0, 1, tzinfo=UTC) - billing_clock.now())
    february = calendar_month(datetime(2026, 2, 1, 0, 0, 1, tzinfo=UTC), "UTC")

    def february_leased() -> int:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT coalesce(sum(consumed), 0) FROM quota_leases"
                                            " WHERE org_id = :o AND month_start = :m"),
                                    {"o": org, "m": february.start}).scalar_one())

    bodies: list[dict[str, Any]] = []
    round_no = 0
    # at most 90 reports (under 10 % of the month, so not even "on track" is due), in small rounds until some
    # were decided under a February lease and 36 were sent (a loaded machine may grant late)
    while len(bodies) < 90 and (len(bodies) < 36 or february_leased() == 0):
        responses = await use_credits(edge.url, org, [(f"user-{i}", f"feb{round_no}-{i}") for i in range(6)])
        assert {r.status_code for r in responses} == {200}, [r.text for r in responses if r.status_code != 200]
        bodies += [r.json() for r in responses]
        round_no += 1
        await asyncio.sleep(0.3)

    feb_leases = february_leased()
    with engine.connect() as conn:
        feb_alerts = conn.execute(sa.text("SELECT kind, threshold_percent, used FROM quota_alerts"
                                          " WHERE org_id = :o AND period_start = :m"),
                                  {"o": org, "m": february.start}).all()
    assert feb_leases > 0, "no February admission was decided under a lease"
    assert {body["month_start"] for body in bodies} == {february.start.isoformat()}
    assert feb_alerts == [], f"February alerts after at most 90 of 1,000: {feb_alerts}"
    low = sorted(body["org_remaining"] for body in bodies)[:3]
    assert low[0] >= 500, f"February answers claim too little left: {low}"  # February used at most 90
    state = counters(engine, org)
    assert [m[1] for m in state["months"]] == [660, len(bodies)]

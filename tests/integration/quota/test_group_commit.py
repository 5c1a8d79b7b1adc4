"""The cross-org group commit against real PostgreSQL: several orgs' batch writes in one statement, each with
its own compare-and-set, and every failure isolated to the write at fault.

Part one drives ``QuotaStore.commit_group`` and ``GroupCommit`` with hand-built writes (the rows each write
must leave are counted by hand); part two is a burst over many orgs at once through the real edge, where
the batches of all orgs ready in one loop turn share a statement.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from services.ingest.service_layer.quota_group_commit import GroupCommit, Outcome
from shared.adapters.postgres.pool import make_pool
from shared.adapters.postgres.quota_store import (
    BatchWrite,
    DuplicateEnquiry,
    NewConsumption,
    QuotaStore,
    QuotaStoreError,
)
from shared.config import Settings
from shared.domain.calendar import calendar_month
from tests.integration.quota.conftest import ADMIN_KEY, START, EdgeServer, admin, counters, new_org, use_credits

pytestmark = pytest.mark.integration

MONTH = calendar_month(START, "UTC")


@pytest.fixture(scope="module")
def quota_settings(settings):  # type: ignore[no-untyped-def]
    """The package's quota settings with the group commit on (the default, said here since this module tests it)."""
    return settings.model_copy(update={"clock": "simulated", "simulated_clock_start": START.isoformat(),
                                       "admin_api_key": SecretStr(ADMIN_KEY), "database_pool_size": 5,
                                       "quota_group_commit": True})


class CountingStore(QuotaStore):
    """The real store, counting the statements it is asked for (to see that a group was one statement)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.groups: list[int] = []
        self.singles = 0

    async def commit_group(self, writes: Sequence[BatchWrite]) -> list[Outcome]:
        self.groups.append(len(writes))
        return await super().commit_group(writes)

    async def commit_batch(self, write: BatchWrite) -> Outcome:
        self.singles += 1
        return await super().commit_batch(write)


@pytest.fixture
async def store(quota_settings, billing_clock) -> AsyncIterator[CountingStore]:  # type: ignore[no-untyped-def]
    pool = make_pool(quota_settings, min_size=1, max_size=4)
    await pool.open(wait=True)
    try:
        yield CountingStore(pool)
    finally:
        await pool.close()


async def _lite_org(store: QuotaStore, reports: int = 20) -> tuple[str, int]:
    """A new org on a plan of ``reports`` a month: (org id, its version)."""
    org_id = new_org()
    row = await store.configure(org_id, {"plan_id": "Lite", "plan_monthly_reports": reports},
                                month=(MONTH.start, MONTH.end), month_plan_reports=reports)
    return org_id, row.version


def _write(org_id: str, version: int, enquiries: list[str], *, user: str = "u1", plan: int = 20) -> BatchWrite:
    consumptions = [NewConsumption(
        enquiry_id=enquiry, user_id=user, org_allotment=plan, org_remaining=plan - n - 1, user_limit=None,
        user_remaining=None, on_trial=False, event_id=uuid.uuid4(),
        envelope_json=f'{{"payload": {{"customer_id": "{org_id}"}}}}') for n, enquiry in enumerate(enquiries)]
    return BatchWrite(org_id=org_id, seen_version=version, month_start=MONTH.start, month_end=MONTH.end,
                      month_plan_reports=plan, consumed_at=START, trial_delta=0, user_limit=None,
                      user_grants={user: len(enquiries)} if enquiries else {}, consumptions=consumptions,
                      alerts=[], usage_topic="usage.v1", alert_topic="billing-events.v1", message_key=org_id)


def _used(engine: sa.Engine, org_id: str) -> tuple[int, int, int]:
    """(month used, consumptions, user u1's used) as PostgreSQL holds them."""
    with engine.connect() as conn:
        used = conn.execute(sa.text("SELECT used FROM quota_org_months WHERE org_id = :o"), {"o": org_id}).scalar_one()
        rows = conn.execute(sa.text("SELECT count(*) FROM quota_consumptions WHERE org_id = :o"),
                            {"o": org_id}).scalar_one()
        user = conn.execute(sa.text("SELECT coalesce(sum(used), 0) FROM quota_user_months WHERE org_id = :o"),
                            {"o": org_id}).scalar_one()
    return int(used), int(rows), int(user)


async def test_one_statement_commits_each_org_whose_version_held_and_skips_the_one_that_moved(
        store: CountingStore, engine: sa.Engine) -> None:
    (a, va), (b, vb), (c, vc) = [await _lite_org(store) for _ in range(3)]
    await store.top_up(b, f"t_{uuid.uuid4().hex}", 5, (MONTH.start, MONTH.end), "test", START)  # b moves on
    outcomes = await store.commit_group([_write(a, va, ["a1", "a2"]), _write(b, vb, ["b1"]),
                                         _write(c, vc, ["c1", "c2", "c3"])])
    assert [version for version, _alerts in outcomes] == [va + 1, None, vc + 1]
    assert _used(engine, a) == (2, 2, 2)
    assert _used(engine, b) == (0, 0, 0)  # its write matched no row: nothing of it was written
    assert _used(engine, c) == (3, 3, 3)
    assert counters(engine, a)["usage_events"] == 2 and counters(engine, b)["usage_events"] == 0


async def test_a_group_commit_refuses_two_writes_of_one_org(store: CountingStore) -> None:
    a, va = await _lite_org(store)
    with pytest.raises(ValueError, match="one write per org"):
        await store.commit_group([_write(a, va, ["x1"]), _write(a, va, ["x2"])])


async def test_writes_ready_together_share_one_statement_and_each_gets_its_own_version(
        store: CountingStore, engine: sa.Engine) -> None:
    orgs = [await _lite_org(store) for _ in range(6)]
    group = GroupCommit(store)
    outcomes = await asyncio.gather(*(group.commit_batch(_write(org, version, [f"{org}-e"]))
                                      for org, version in orgs))
    # the first found nothing in flight and went alone at once; the five behind it shared one statement
    assert store.groups == [5] and store.singles == 1
    assert [version for version, _alerts in outcomes] == [version + 1 for _org, version in orgs]
    assert all(_used(engine, org) == (1, 1, 1) for org, _version in orgs)


async def test_a_second_write_of_one_org_waits_for_the_next_group(store: CountingStore, engine: sa.Engine) -> None:
    (x, vx), (a, va), (b, vb) = [await _lite_org(store) for _ in range(3)]
    group = GroupCommit(store)
    _x, first, other, second = await asyncio.gather(group.commit_batch(_write(x, vx, ["x1"])),
                                                    group.commit_batch(_write(a, va, ["a1"])),
                                                    group.commit_batch(_write(b, vb, ["b1"])),
                                                    group.commit_batch(_write(a, va + 1, ["a2"])))
    # x went alone; the group behind it held a and b; a's second write (decided on a's next version) went
    # alone afterwards
    assert store.groups == [2] and store.singles == 2
    assert (first[0], other[0], second[0]) == (va + 1, vb + 1, va + 2)
    assert _used(engine, a) == (2, 2, 2)


async def test_a_write_the_check_backstop_refuses_fails_alone_and_the_rest_of_its_group_commits(
        store: CountingStore, engine: sa.Engine) -> None:
    (x, vx), (a, va), (b, vb), (c, vc) = [await _lite_org(store, reports=3) for _ in range(4)]
    group = GroupCommit(store)
    _x, *results = await asyncio.gather(
        group.commit_batch(_write(x, vx, ["x1"], plan=3)),
        group.commit_batch(_write(a, va, ["a1"], plan=3)),
        group.commit_batch(_write(b, vb, ["b1", "b2", "b3", "b4"], plan=3)),  # 4 of 3: the CHECK refuses it
        group.commit_batch(_write(c, vc, ["c1", "c2"], plan=3)), return_exceptions=True)
    assert store.groups == [3] and store.singles == 1 + 3  # x; the group failed whole, then each alone
    assert results[0] == (va + 1, []) and results[2] == (vc + 1, [])
    assert isinstance(results[1], QuotaStoreError) and results[1].code == "quota_backstop"
    assert _used(engine, a) == (1, 1, 1) and _used(engine, c) == (2, 2, 2)
    assert _used(engine, b) == (0, 0, 0) and counters(engine, b)["usage_events"] == 0


async def test_an_enquiry_admitted_meanwhile_fails_only_its_own_write_in_a_group(
        store: CountingStore, engine: sa.Engine) -> None:
    (x, vx), (a, va), (b, vb) = [await _lite_org(store) for _ in range(3)]
    done, _alerts = await store.commit_batch(_write(b, vb, ["b-dup"]))  # "another process" admitted it
    assert done == vb + 1
    group = GroupCommit(store)
    _x, *results = await asyncio.gather(group.commit_batch(_write(x, vx, ["x1"])),
                                        group.commit_batch(_write(a, va, ["a1"])),
                                        group.commit_batch(_write(b, vb + 1, ["b-dup", "b2"])),
                                        return_exceptions=True)
    assert store.groups == [2]
    assert results[0] == (va + 1, [])
    assert isinstance(results[1], DuplicateEnquiry)
    assert _used(engine, a) == (1, 1, 1)
    assert _used(engine, b) == (1, 1, 1)  # only the first admission of b-dup; b2 was not written


async def test_a_burst_over_many_orgs_at_once_admits_exactly_each_org_s_allotment(
        edge: EdgeServer, engine: sa.Engine) -> None:
    # 30 orgs on Lite (20 a month), 30 requests each, all 900 at once: the edge's batches of different orgs
    # share group statements; every org admits exactly 20, refuses 10, and its alerts fire once.
    orgs = [new_org() for _ in range(30)]
    for org in orgs:
        assert (await admin(edge.url, "PUT", f"/v1/quota/orgs/{org}/plan", {"plan": "Lite"})).status_code == 200
    bursts = await asyncio.gather(*(use_credits(edge.url, org, [(f"u{n % 3}", f"{org}-{n}") for n in range(30)])
                                    for org in orgs))
    for org, responses in zip(orgs, bursts, strict=True):
        statuses = sorted(response.status_code for response in responses)
        assert statuses == [200] * 20 + [402] * 10, (org, statuses)
        assert {response.json()["reason"] for response in responses if response.status_code == 402} \
            == {"org_limit_reached"}
        held = counters(engine, org)
        assert held["months"][0][1] == 20 and held["consumptions"] == 20 and held["usage_events"] == 20
        assert len(held["alerts"]) == len(set(held["alerts"])) == len(held["alert_events"]) > 0


async def test_two_edges_bursting_on_the_same_orgs_admit_exactly_each_org_s_allotment(
        edge: EdgeServer, quota_settings: Settings, engine: sa.Engine) -> None:
    # 20 orgs on Lite (20 a month), 40 requests each, half through each edge, all 800 at once: both edges'
    # groups hold the same orgs, so their compare-and-sets collide (and their row locks would cross if a
    # group did not lock its orgs in org id order). Every org admits exactly 20, nothing fails.
    orgs = [new_org() for _ in range(20)]
    for org in orgs:
        assert (await admin(edge.url, "PUT", f"/v1/quota/orgs/{org}/plan", {"plan": "Lite"})).status_code == 200
    second = EdgeServer(quota_settings).start()
    try:
        bursts = await asyncio.gather(*(
            use_credits(server.url, org, [(f"u{n % 4}", f"{org}-{n}") for n in range(start, 40, 2)])
            for org in orgs for server, start in ((edge, 0), (second, 1))))
    finally:
        second.stop()
    for index, org in enumerate(orgs):
        responses = bursts[2 * index] + bursts[2 * index + 1]
        statuses = sorted(response.status_code for response in responses)
        assert statuses == [200] * 20 + [402] * 20, (org, statuses)
        assert sorted(r.json()["org_remaining"] for r in responses if r.status_code == 200) == list(range(20))
        held = counters(engine, org)
        assert held["months"][0][1] == 20 and held["consumptions"] == 20 and held["usage_events"] == 20

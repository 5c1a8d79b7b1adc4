"""Month boundaries, trials, top-ups and alerts on the simulated billing clock, over HTTP.

The tests of this module share one billing clock that only moves forward, so they run in timeline order
(January 15 -> February 1 -> February 15 -> ...); each moves the clock to the instant its scenario needs.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from shared.adapters.clock import DatabaseClock
from shared.config import Settings
from tests.integration.quota.conftest import EdgeServer, admin, counters, new_org, use_credits

pytestmark = pytest.mark.integration


def move_clock_to(clock: DatabaseClock, at: datetime) -> None:
    clock.advance(at - clock.now())


async def _org_on(edge: EdgeServer, plan: str, timezone: str = "UTC") -> str:
    org = new_org()
    response = await admin(edge.url, "PUT", f"/v1/quota/orgs/{org}/plan", {"plan": plan, "timezone": timezone})
    assert response.status_code == 200, response.text
    return org


async def _use(edge: EdgeServer, org: str, count: int, prefix: str, user: str = "u") -> list[int]:
    return [r.status_code for r in await use_credits(edge.url, org, [(user, f"{prefix}-{i}") for i in range(count)])]


async def test_the_month_resets_at_local_midnight_on_the_first_without_any_job(
        edge: EdgeServer, billing_clock: DatabaseClock, engine: sa.Engine) -> None:
    utc_org = await _org_on(edge, "Lite")
    berlin_org = await _org_on(edge, "Lite", timezone="Europe/Berlin")

    move_clock_to(billing_clock, datetime(2026, 1, 31, 22, 59, 59, tzinfo=UTC))  # 23:59:59 in Berlin
    assert Counter(await _use(edge, berlin_org, 21, "jan")) == {200: 20, 402: 1}
    billing_clock.advance(timedelta(seconds=2))  # 00:00:01 on February 1st in Berlin
    [response] = await use_credits(edge.url, berlin_org, [("u", "feb-0")])
    assert response.status_code == 200
    assert response.json()["month_start"] == "2026-01-31T23:00:00+00:00"
    assert response.json()["org_remaining"] == 19

    move_clock_to(billing_clock, datetime(2026, 1, 31, 23, 59, 59, tzinfo=UTC))
    assert Counter(await _use(edge, utc_org, 21, "jan")) == {200: 20, 402: 1}
    billing_clock.advance(timedelta(seconds=2))
    assert await _use(edge, utc_org, 1, "feb") == [200]
    assert [(m[0].month, m[1]) for m in counters(engine, utc_org)["months"]] == [(1, 20), (2, 1)]


async def test_top_ups_add_to_this_month_only_and_expire_when_it_ends(
        edge: EdgeServer, billing_clock: DatabaseClock, engine: sa.Engine) -> None:
    org = await _org_on(edge, "Lite")
    move_clock_to(billing_clock, datetime(2026, 2, 27, 12, tzinfo=UTC))
    assert Counter(await _use(edge, org, 20, "a")) == {200: 20}

    response = await admin(edge.url, "POST", f"/v1/quota/orgs/{org}/top-ups", {"reports": 5, "top_up_id": "t-1"})
    assert response.status_code == 200
    assert response.json()["expires_at"] == "2026-03-01T00:00:00Z"
    assert (response.json()["state"]["allotment"], response.json()["state"]["remaining"]) == (25, 5)
    replay = await admin(edge.url, "POST", f"/v1/quota/orgs/{org}/top-ups", {"reports": 5, "top_up_id": "t-1"})
    assert replay.json()["applied"] is False and replay.json()["state"]["allotment"] == 25

    assert Counter(await _use(edge, org, 8, "b")) == {200: 5, 402: 3}

    move_clock_to(billing_clock, datetime(2026, 3, 1, 0, 0, 1, tzinfo=UTC))
    view = (await admin(edge.url, "GET", f"/v1/quota/orgs/{org}")).json()
    assert (view["top_ups"], view["allotment"], view["used"]) == (0, 20, 0)
    assert Counter(await _use(edge, org, 21, "c")) == {200: 20, 402: 1}


async def test_a_trial_gives_ten_reports_for_fourteen_days_then_nothing_until_a_plan(
        edge: EdgeServer, billing_clock: DatabaseClock, engine: sa.Engine) -> None:
    move_clock_to(billing_clock, datetime(2026, 3, 2, 9, tzinfo=UTC))
    exhausted, expiring = new_org(), new_org()
    for org in (exhausted, expiring):
        response = await admin(edge.url, "POST", f"/v1/quota/orgs/{org}/trial", {})
        assert response.status_code == 200 and response.json()["on_trial"] is True
    [no_plan] = await use_credits(edge.url, new_org(), [("u", "x")])
    assert (no_plan.status_code, no_plan.json()["reason"]) == (402, "no_plan")

    responses = await use_credits(edge.url, exhausted, [(f"u{i}", f"e{i}") for i in range(30)])
    assert Counter(r.status_code for r in responses) == {200: 10, 402: 20}
    assert {r.json()["reason"] for r in responses if r.status_code == 402} == {"trial_exhausted"}

    assert await _use(edge, expiring, 3, "early") == [200, 200, 200]
    billing_clock.advance(timedelta(days=14))
    [late] = await use_credits(edge.url, expiring, [("u", "late")])
    assert (late.status_code, late.json()["reason"]) == (402, "trial_expired")

    await admin(edge.url, "PUT", f"/v1/quota/orgs/{expiring}/plan", {"plan": "Lite"})
    view = (await admin(edge.url, "GET", f"/v1/quota/orgs/{expiring}")).json()
    assert (view["on_trial"], view["allotment"], view["used"], view["remaining"]) == (False, 20, 3, 17)
    assert await _use(edge, expiring, 1, "paid") == [200]
    trial_alerts = counters(engine, exhausted)["alerts"]
    assert trial_alerts == [("quota.limit_reached", 0, "")]


async def test_a_plan_change_mid_month_keeps_the_months_used_count(
        edge: EdgeServer, billing_clock: DatabaseClock) -> None:
    org = await _org_on(edge, "Basic")
    assert Counter(await _use(edge, org, 90, "a")) == {200: 90}
    await admin(edge.url, "PUT", f"/v1/quota/orgs/{org}/plan", {"plan": "Lite"})
    [refused] = await use_credits(edge.url, org, [("u", "after-downgrade")])
    assert (refused.status_code, refused.json()["reason"]) == (402, "org_limit_reached")
    upgraded = (await admin(edge.url, "PUT", f"/v1/quota/orgs/{org}/plan", {"plan": "Enterprise"})).json()
    assert (upgraded["allotment"], upgraded["used"], upgraded["remaining"]) == (500, 90, 410)


async def test_alerts_fire_exactly_once_per_threshold_and_period_across_restarts(
        quota_settings: Settings, billing_clock: DatabaseClock, engine: sa.Engine) -> None:
    move_clock_to(billing_clock, datetime(2026, 3, 16, 12, tzinfo=UTC))  # half of March gone
    server = EdgeServer(quota_settings).start()
    try:
        org = await _org_on(server, "Basic")
        await admin(server.url, "PUT", f"/v1/quota/orgs/{org}/user-limit", {"limit": 40})
        assert Counter(await _use(server, org, 60, "a", user="ann")) == {200: 40, 429: 20}
        assert Counter(await _use(server, org, 20, "b", user="bob")) == {200: 20}
        first = counters(engine, org)["alerts"]
        assert Counter(first) == {("quota.limit_reached", 0, "ann"): 1, ("quota.on_track_to_exceed", 0, ""): 1}
        assert Counter(await _use(server, org, 20, "c", user="cid")) == {200: 20}  # 60 -> 80 %

        server.stop()
        server = EdgeServer(quota_settings).start()  # a restart: nothing in memory survives
        assert Counter(await _use(server, org, 30, "d", user="dan")) == {200: 20, 402: 10}
        assert Counter(await _use(server, org, 5, "f", user="ann")) == {402: 5}

        server.stop()
        server = EdgeServer(quota_settings).start()
        assert Counter(await _use(server, org, 5, "e", user="eve")) == {402: 5}
    finally:
        server.stop()

    state = counters(engine, org)
    assert Counter(state["alerts"]) == {
        ("quota.limit_reached", 0, "ann"): 1, ("quota.on_track_to_exceed", 0, ""): 1,
        ("quota.threshold_reached", 80, ""): 1, ("quota.threshold_reached", 100, ""): 1,
        ("quota.limit_reached", 0, ""): 1,
    }
    assert Counter(state["alert_events"]) == {"quota.limit_reached": 2, "quota.on_track_to_exceed": 1,
                                              "quota.threshold_reached": 2}

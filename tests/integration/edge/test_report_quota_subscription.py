"""One subscription model for report quotas (issue 15, item 4), through the API and the REAL billing worker (a
subprocess running its consumer and scheduler on the edge's schema, topics and simulated clock).

`PUT /v1/quota/orgs/{org}/plan` answers as before (the quota state) and now also subscribes the org (a billing
customer) to the report plan the first time, and changes that subscription at once to the new plan later: the
allotment comes from the plan in the catalog (Basic 100 reports, Ultimate 1000) and the next period-close
invoice bills the Ultimate fee (USD 799.00 a month in advance, example prices of report_plans.yaml).
A top-up (50 reports, sent twice with one id) is 1050 at the quota and ONE unit grant of 50 on the `reports`
meter of the subscription, expiring at the month's end. A quota-only org (not a billing customer) gets no
subscription, as before.

Hand-computed: subscribed on Basic at 10 Mar 12:00 (invoice 99.00 for 10 Mar - 10 Apr), changed to Ultimate on
15 Mar 12:00 with 26 of the period's 31 days left: proration -99.00 x 26/31 = -83.03 and +799.00 x 26/31 =
+670.13 (587.10); the close at 10 Apr bills Ultimate 799.00 for 10 Apr - 10 May.
"""

from __future__ import annotations

import subprocess
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from services.ingest.quota_wiring import build_quota_service
from shared.adapters.postgres.schema.billing import subscriptions

from .conftest import START, advance_to, call, onboard, real_worker_settings, until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def edge_settings(settings):  # type: ignore[no-untyped-def]
    return real_worker_settings(settings, scheduler_interval_s=0.2)


def subscriptions_of(engine: sa.Engine, customer_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(
            sa.select(subscriptions).where(subscriptions.c.customer_id == customer_id))]


async def on_plan(engine: sa.Engine, customer_id: str, plan_id: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        rows = subscriptions_of(engine, customer_id)
        return rows[0] if len(rows) == 1 and rows[0]["plan_id"] == plan_id else None
    found: dict[str, Any] = await until(probe, f"the subscription of {customer_id} on {plan_id}")
    return found


async def invoice_of(client: httpx.AsyncClient, customer_id: str, period_end: datetime) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        page = (await call(client, "GET", f"/v1/customers/{customer_id}/invoices?limit=100")).json()["data"]
        for invoice in page:
            if invoice["kind"] == "period_close" and datetime.fromisoformat(invoice["period_end"]) == period_end:
                return dict(invoice)
        return None
    found: dict[str, Any] = await until(probe, f"the invoice of the period ending {period_end}")
    return found


async def test_a_report_org_changed_from_basic_to_ultimate_gets_the_ultimate_allotment_and_invoice(
        app: Any, container: Any, client: httpx.AsyncClient, real_worker: subprocess.Popen[bytes]) -> None:
    service, close = await build_quota_service(container)
    app.state.quota = service
    try:
        org = (await onboard(client, payment_method_id="pm_card_visa"))["customer_id"]
        basic = await call(client, "PUT", f"/v1/quota/orgs/{org}/plan", {"plan": "Basic"})
        assert basic.status_code == 200, basic.text
        assert (basic.json()["plan_id"], basic.json()["allotment"]) == ("reports_basic", 100)
        sub = await on_plan(container.engine, org, "reports_basic")  # created by the worker
        assert sub["status"] == "active"

        await advance_to(client, START + timedelta(days=5))
        ultimate = await call(client, "PUT", f"/v1/quota/orgs/{org}/plan", {"plan": "Ultimate"})
        assert ultimate.status_code == 200, ultimate.text
        assert (ultimate.json()["plan_id"], ultimate.json()["allotment"]) == ("reports_ultimate", 1000)  # at once
        read = (await call(client, "GET", f"/v1/quota/orgs/{org}")).json()
        assert (read["plan_name"], read["allotment"], read["remaining"]) == ("Ultimate", 1000, 1000)
        changed = await on_plan(container.engine, org, "reports_ultimate")  # the same subscription, changed
        assert changed["subscription_id"] == sub["subscription_id"]

        for _ in range(2):  # a top-up replayed with its id: applied once, by the quota and by the ledger
            topped = await call(client, "POST", f"/v1/quota/orgs/{org}/top-ups", {"reports": 50, "top_up_id": "tu-1"})
            assert topped.status_code == 200, topped.text
        assert topped.json()["state"]["allotment"] == 1050
        grants_url = f"/v1/subscriptions/{sub['subscription_id']}/credit-grants"

        async def top_up_granted() -> list[dict[str, Any]]:
            grants = (await call(client, "GET", grants_url)).json()
            return [g for g in grants if g["source"] == "top_up"]
        [grant] = await until(top_up_granted, "the top-up as a credit grant of the subscription")
        assert (grant["meter_id"], float(grant["granted_units"])) == ("reports", 50.0)
        assert datetime.fromisoformat(grant["expires_at"]) == datetime.fromisoformat(topped.json()["expires_at"])

        again = await call(client, "PUT", f"/v1/quota/orgs/{org}/plan", {"plan": "reports_ultimate"})
        assert again.status_code == 200, again.text  # nothing to change: no command, one subscription
        assert len(subscriptions_of(container.engine, org)) == 1

        period_end = changed["current_period_end"]
        await advance_to(client, period_end + timedelta(minutes=5))
        invoice = await invoice_of(client, org, period_end)
        fees = [(line["kind"], line["amount_minor"]) for line in invoice["lines"] if line["kind"] == "fee"]
        change = next(i for i in (await call(client, "GET", f"/v1/customers/{org}/invoices?limit=100")).json()["data"]
                      if i["kind"] == "subscription_change")
        # 31-day period (10 Mar 12:00 - 10 Apr 12:00), changed on 15 Mar 12:00, 26 days left:
        # Basic 99.00 x 26/31 = 83.03 back, Ultimate 799.00 x 26/31 = 670.13 due, net 587.10
        assert [(line["kind"], line["amount_minor"]) for line in change["lines"]] == [
            ("proration", -8_303), ("proration", 67_013)]
        assert fees == [("fee", 79_900)], invoice["lines"]  # the next period of Ultimate, in advance

        quota_only = f"org_{uuid.uuid4().hex[:10]}"  # not a billing customer: the quota alone, as before
        alone = await call(client, "PUT", f"/v1/quota/orgs/{quota_only}/plan", {"plan": "Lite"})
        assert (alone.status_code, alone.json()["allotment"]) == (200, 20), alone.text
        assert subscriptions_of(container.engine, quota_only) == []
    finally:
        app.state.quota = None
        await close()


TEAM = {"id": "reports_team", "name": "Team", "family": "report_quota", "interval": "month", "currency": "USD",
        "price": "50.00", "meters": {"reports": {"overage": "block"}},
        "quota": {"meter": "reports", "limit": 300, "window": "calendar_month"}}


async def test_the_allotment_and_the_subscription_take_the_same_current_version_of_a_report_plan(
        app: Any, container: Any, client: httpx.AsyncClient, real_worker: subprocess.Popen[bytes]) -> None:
    """A report plan made through the catalog API, then a second version (400 reports, USD 60.00): the org's
    allotment is the current version's, the version its subscription is on (before: 300, the first one's)."""
    service, close = await build_quota_service(container)
    app.state.quota = service
    try:
        assert (await call(client, "POST", "/v1/plans", TEAM)).status_code == 201
        definition = {k: v for k, v in TEAM.items() if k != "id"}
        second = await call(client, "POST", "/v1/plans/reports_team/versions",
                            {**definition, "price": "60.00", "quota": {**TEAM["quota"], "limit": 400}})  # type: ignore[dict-item]
        assert second.json()["current_version"] == 2, second.text
        org = (await onboard(client, payment_method_id="pm_card_visa"))["customer_id"]

        async def put() -> httpx.Response | None:  # the quota's catalog snapshot catches up within seconds
            answer = await call(client, "PUT", f"/v1/quota/orgs/{org}/plan", {"plan": "reports_team"})
            return answer if answer.status_code == 200 and answer.json()["plan_id"] == "reports_team@v2" else None
        team = await until(put, "the second version of reports_team at the quota")
        assert team.json()["allotment"] == 400, team.text
        await on_plan(container.engine, org, "reports_team@v2")
        read = (await call(client, "GET", f"/v1/quota/orgs/{org}")).json()
        assert (read["plan_name"], read["allotment"]) == ("Team", 400)
    finally:
        app.state.quota = None
        await close()


async def test_an_org_subscribed_to_a_report_plan_beforehand_has_that_subscription_changed_not_a_second_one(
        app: Any, container: Any, client: httpx.AsyncClient, real_worker: subprocess.Popen[bytes]) -> None:
    """`POST /v1/subscriptions` on Lite, then the quota's plan set to Enterprise without naming the subscription:
    the same subscription goes to Enterprise (500 reports); before: a second subscription on Enterprise."""
    service, close = await build_quota_service(container)
    app.state.quota = service
    try:
        org = (await onboard(client, payment_method_id="pm_card_visa"))["customer_id"]
        made = await call(client, "POST", "/v1/subscriptions", {"customer_id": org, "plan_id": "reports_lite"})
        assert made.status_code == 201, made.text
        enterprise = await call(client, "PUT", f"/v1/quota/orgs/{org}/plan", {"plan": "Enterprise"})
        assert (enterprise.status_code, enterprise.json()["allotment"]) == (200, 500), enterprise.text
        changed = await on_plan(container.engine, org, "reports_enterprise")  # exactly one subscription
        assert changed["subscription_id"] == made.json()["subscription_id"]
    finally:
        app.state.quota = None
        await close()


async def test_the_trial_of_an_org_subscribed_to_the_trial_plan_is_a_unit_grant_of_that_subscription(
        app: Any, container: Any, client: httpx.AsyncClient, real_worker: subprocess.Popen[bytes]) -> None:
    """`POST /v1/subscriptions` on reports_trial (what the demo does), then the quota's trial (called twice):
    10 reports at the quota and ONE grant of 10 units (source trial) expiring when the trial ends (14 days)."""
    service, close = await build_quota_service(container)
    app.state.quota = service
    try:
        org = (await onboard(client))["customer_id"]
        made = await call(client, "POST", "/v1/subscriptions", {"customer_id": org, "plan_id": "reports_trial"})
        assert made.status_code == 201, made.text
        for _ in range(2):
            trial = await call(client, "POST", f"/v1/quota/orgs/{org}/trial", {})
            assert (trial.status_code, trial.json()["allotment"], trial.json()["on_trial"]) == (200, 10, True)
        grants_url = f"/v1/subscriptions/{made.json()['subscription_id']}/credit-grants"

        async def trial_granted() -> list[dict[str, Any]]:
            return [g for g in (await call(client, "GET", grants_url)).json() if g["source"] == "trial"]
        [grant] = await until(trial_granted, "the trial as a credit grant of the subscription")
        assert (grant["meter_id"], float(grant["granted_units"])) == ("reports", 10.0)
        ends = datetime.fromisoformat(trial.json()["trial_ends_at"])
        assert datetime.fromisoformat(grant["expires_at"]) == ends
        assert ends - datetime.fromisoformat(trial.json()["trial_started_at"]) == timedelta(days=14)
    finally:
        app.state.quota = None
        await close()

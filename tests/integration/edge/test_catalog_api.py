"""The catalog API through the edge and the REAL billing worker (a subprocess): a meter and a plan created
through the API (no YAML) are subscribed, metered and invoiced at the API plan's prices; refusals name their
field and code; a plan in use is never deleted.

Hand-computed (1): plan api_starter, USD 20.00 a month, api_calls (count) at USD 0.05 per call, no credits.
30 calls in the first period -> a usage line of 30 x 0.05 = USD 1.50 on the period close invoice.
Hand-computed (2): plan metered v1 (20.00, 0.05 a call), subscribed; v2 (30.00, 0.10) created; 10 calls,
then a migration at the period end: the first close bills 10 x 0.05 = 0.50 and the next period's fee at v2,
30.00; 10 calls in the second period are billed 10 x 0.10 = 1.00.
"""

from __future__ import annotations

import subprocess
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from .conftest import ADMIN, START, call, onboard, real_worker_settings, until

pytestmark = pytest.mark.integration

METER = {"id": "api_calls", "name": "API calls", "unit": "call", "event_type": "api_call", "aggregation": "count"}
PLAN = {"id": "api_starter", "name": "API starter", "family": "api", "interval": "month", "currency": "USD",
        "price": "20.00", "meters": {"api_calls": {"unit_price": "0.05", "overage": "bill"}}}


@pytest.fixture(scope="module")
def edge_settings(settings):  # type: ignore[no-untyped-def]
    return real_worker_settings(settings, scheduler_interval_s=0.2)


async def test_a_plan_created_through_the_api_is_subscribed_metered_and_invoiced_at_its_prices(
        client: httpx.AsyncClient, real_worker: subprocess.Popen[bytes]) -> None:
    meter = await call(client, "POST", "/v1/meters", METER)
    assert meter.status_code == 201, meter.text
    plan = await call(client, "POST", "/v1/plans", PLAN)
    assert plan.status_code == 201, plan.text
    assert (plan.json()["current_version"], [v["version"] for v in plan.json()["versions"]]) == (1, [1])

    customer = await onboard(client, payment_method_id="pm_card_visa")
    cid = customer["customer_id"]
    created = await call(client, "POST", "/v1/subscriptions", {"customer_id": cid, "plan_id": "api_starter"})
    assert created.status_code == 201, created.text
    sid = created.json()["subscription_id"]

    at = START + timedelta(days=2)
    assert (await call(client, "POST", "/v1/clock/advance", {"seconds": 2 * 86_400})).status_code == 200
    batch = [{"transaction_id": f"tx-{uuid.uuid4().hex[:12]}", "customer_id": cid, "event_type": "api_call",
              "timestamp": at.isoformat(), "properties": {}} for _ in range(30)]
    ingested = await call(client, "POST", "/v1/ingest", batch)
    assert ingested.status_code == 200 and ingested.json()["accepted"] == 30, ingested.text

    async def usage() -> bool:
        body = (await call(client, "GET", f"/v1/subscriptions/{sid}/usage")).json()
        found = next((m for m in body.get("meters", []) if m["meter_id"] == "api_calls"), None)
        return found is not None and int(float(found["quantity"])) == 30
    await until(usage, "30 api calls materialised")

    moved = await call(client, "POST", "/v1/clock/advance", {"seconds": 30 * 86_400})
    assert moved.status_code == 200, moved.text

    async def usage_line() -> dict[str, Any] | None:
        invoices = (await call(client, "GET", f"/v1/customers/{cid}/invoices")).json()["data"]
        for invoice in invoices:
            view = (await call(client, "GET", f"/v1/invoices/{invoice['invoice_id']}")).json()
            for line in view.get("lines", []):
                if line["kind"] == "usage":
                    return dict(line)
        return None
    line = await until(usage_line, "the period close invoice with its usage line")
    assert (line["quantity"], line["unit_price"], line["amount_minor"]) == ("30", "0.05", 150)

    # the YAML plans are still sold (the first API write stored the bootstrap files first)
    other = await onboard(client, payment_method_id="pm_card_visa")
    pro = await call(client, "POST", "/v1/subscriptions", {"customer_id": other["customer_id"], "plan_id": "pro"})
    assert pro.status_code == 201, pro.text

    in_use = await call(client, "DELETE", "/v1/plans/api_starter")
    assert (in_use.status_code, in_use.json()["code"]) == (409, "in_use"), in_use.text
    archived = await call(client, "POST", "/v1/plans/api_starter/archive")
    assert archived.status_code == 200 and archived.json()["archived_at"] is not None, archived.text
    late = await onboard(client, payment_method_id="pm_card_visa")
    refused = await call(client, "POST", "/v1/subscriptions", {"customer_id": late["customer_id"],
                                                              "plan_id": "api_starter"})
    assert (refused.status_code, refused.json()["code"]) == (422, "plan_archived"), refused.text
    assert refused.json()["errors"] == [{"field": "plan_id", "reason": "archived"}]
    assert real_worker.poll() is None, "the worker exited"


async def test_catalog_writes_are_refused_with_their_field_and_code(  # type: ignore[no-untyped-def]
        client: httpx.AsyncClient, container) -> None:
    negative = await call(client, "POST", "/v1/plans", {**PLAN, "id": "bad_plan", "price": "-1.00"})
    assert negative.status_code == 422, negative.text
    assert (negative.json()["code"], negative.json()["errors"]) == (
        "invalid_catalog_entry", [{"field": "price", "reason": "must not be negative"}])
    unknown_meter = await call(client, "POST", "/v1/plans", {**PLAN, "id": "bad_meter", "meters": {
        "nope": {"unit_price": "0.01", "overage": "bill"}}})
    assert unknown_meter.status_code == 422 and unknown_meter.json()["errors"][0]["field"] == "meters.nope", \
        unknown_meter.text
    sum_without_property = await call(client, "POST", "/v1/meters", {**METER, "id": "bytes", "aggregation": "sum"})
    assert sum_without_property.status_code == 422, sum_without_property.text
    assert sum_without_property.json()["errors"][0]["field"] == "value_property"

    first = await call(client, "POST", "/v1/meters", {**METER, "id": "uploads", "event_type": "upload"})
    assert first.status_code == 201, first.text
    again = await call(client, "POST", "/v1/meters", {**METER, "id": "uploads", "event_type": "upload"})
    assert (again.status_code, again.json()["code"]) == (409, "already_exists"), again.text
    renamed = await call(client, "PATCH", "/v1/meters/uploads", {"name": "Uploads", "archived": True})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["definition"]["name"] == "Uploads" and renamed.json()["archived_at"] is not None
    key = {**ADMIN, "Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    body = {**METER, "id": "downloads", "event_type": "download"}
    created, replayed = [await client.post("/v1/meters", json=body, headers=key) for _ in range(2)]
    assert (created.status_code, replayed.status_code) == (201, 201), replayed.text  # replayed, not 409
    assert replayed.json() == created.json()
    missing = await call(client, "GET", "/v1/plans/no_such_plan")
    assert (missing.status_code, missing.json()["code"]) == (404, "unknown_plan"), missing.text
    import sqlalchemy as sa

    from shared.adapters.postgres.schema.edge import audit_log
    with container.engine.connect() as conn:
        audited = conn.execute(sa.select(audit_log.c.action, audit_log.c.details)
                               .where(audit_log.c.action.like("catalog.meter.%"))).all()
    assert ("catalog.meter.create", {"meter_id": "uploads"}) in [tuple(a) for a in audited]
    assert ["catalog.meter.create" for a in audited if a.details.get("meter_id") == "downloads"] == [
        "catalog.meter.create"]  # the replay wrote nothing


async def test_a_new_version_is_current_and_the_old_one_is_kept(client: httpx.AsyncClient) -> None:
    await call(client, "POST", "/v1/meters", {**METER, "id": "v_calls", "event_type": "v_call"})
    plan = {**PLAN, "id": "versioned", "meters": {"v_calls": {"unit_price": "0.05", "overage": "bill"}}}
    assert (await call(client, "POST", "/v1/plans", plan)).status_code == 201
    definition = {k: v for k, v in plan.items() if k != "id"}
    second = await call(client, "POST", "/v1/plans/versioned/versions", {**definition, "price": "25.00"})
    assert second.status_code == 201, second.text
    assert second.json()["current_version"] == 2 and second.json()["definition"]["price"] == "25.00"
    assert [v["definition"]["price"] for v in second.json()["versions"]] == ["20.00", "25.00"]
    same = await call(client, "POST", "/v1/plans/versioned/versions", {**definition, "price": "25.00"})
    assert same.json()["current_version"] == 2  # the same definition adds no version
    coupon = await call(client, "POST", "/v1/coupons", {"id": "API10", "percent_off": "10", "duration": "once",
                                                         "plans": ["versioned"]})
    assert coupon.status_code == 201, coupon.text
    listed = (await call(client, "GET", "/v1/coupons")).json()["data"]
    assert "API10" in [c["id"] for c in listed]


async def _calls(client: httpx.AsyncClient, cid: str, sid: str, event_type: str, count: int) -> None:
    now = (await call(client, "GET", "/v1/clock")).json()["now"]
    batch = [{"transaction_id": f"tx-{uuid.uuid4().hex[:12]}", "customer_id": cid, "event_type": event_type,
              "timestamp": now, "properties": {}} for _ in range(count)]
    ingested = await call(client, "POST", "/v1/ingest", batch)
    assert ingested.status_code == 200 and ingested.json()["accepted"] == count, ingested.text

    async def seen() -> bool:
        body = (await call(client, "GET", f"/v1/subscriptions/{sid}/usage")).json()
        return any(int(float(m["quantity"])) == count for m in body.get("meters", []))
    await until(seen, f"{count} calls materialised")


async def _close_lines(client: httpx.AsyncClient, cid: str, closes: int) -> list[list[tuple[str, str, int]]]:
    """(kind, plan or meter, amount) of the lines of each period close invoice, once there are ``closes``."""
    async def found() -> list[list[tuple[str, str, int]]] | None:
        invoices = (await call(client, "GET", f"/v1/customers/{cid}/invoices")).json()["data"]
        views = [(await call(client, "GET", f"/v1/invoices/{i['invoice_id']}")).json() for i in invoices]
        closing = sorted((v for v in views if v["kind"] != "subscription_start"), key=lambda v: v["period_start"])
        if len(closing) < closes:
            return None
        return [[(line["kind"], line["plan_id"] or line["meter_id"], line["amount_minor"]) for line in v["lines"]]
                for v in closing]
    result: list[list[tuple[str, str, int]]] = await until(found, f"{closes} period close invoices")
    return result


async def test_a_price_change_migrated_at_the_period_end_bills_the_period_under_way_at_the_old_price(
        client: httpx.AsyncClient, real_worker: subprocess.Popen[bytes]) -> None:
    await call(client, "POST", "/v1/meters", {**METER, "id": "m_calls", "event_type": "m_call"})
    v1 = {**PLAN, "id": "metered", "meters": {"m_calls": {"unit_price": "0.05", "overage": "bill"}}}
    assert (await call(client, "POST", "/v1/plans", v1)).status_code == 201
    customer = await onboard(client, payment_method_id="pm_card_visa")
    cid = customer["customer_id"]
    created = await call(client, "POST", "/v1/subscriptions", {"customer_id": cid, "plan_id": "metered"})
    assert created.status_code == 201 and created.json()["plan_id"] == "metered", created.text
    sid = created.json()["subscription_id"]

    v2 = {k: v for k, v in v1.items() if k != "id"} | {"price": "30.00", "meters": {
        "m_calls": {"unit_price": "0.10", "overage": "bill"}}}
    assert (await call(client, "POST", "/v1/plans/metered/versions", v2)).json()["current_version"] == 2
    await _calls(client, cid, sid, "m_call", 10)

    migrated = await call(client, "POST", f"/v1/subscriptions/{sid}/migrate", {"at": "period_end"})
    assert migrated.status_code == 200, migrated.text
    assert (migrated.json()["plan_id"], migrated.json()["pending_plan_id"]) == ("metered", "metered@v2")
    upcoming = await call(client, "GET", f"/v1/subscriptions/{sid}/upcoming-invoice")
    assert upcoming.status_code == 200, upcoming.text  # the preview reads the stored catalog too
    assert [(line["kind"], line["amount_minor"]) for line in upcoming.json()["invoice"]["lines"]
            if line["kind"] == "usage"] == [("usage", 50)]
    newcomer = await onboard(client, payment_method_id="pm_card_visa")
    fresh = await call(client, "POST", "/v1/subscriptions", {"customer_id": newcomer["customer_id"],
                                                            "plan_id": "metered"})
    assert fresh.json()["plan_id"] == "metered@v2", fresh.text  # new subscriptions get the current version

    assert (await call(client, "POST", "/v1/clock/advance", {"seconds": 32 * 86_400})).status_code == 200
    [first] = await _close_lines(client, cid, 1)
    # the period under way at v1's 0.05, the next period's fee (in advance) at v2's 30.00
    assert sorted((kind, amount) for kind, _, amount in first) == [("fee", 3000), ("usage", 50)], first
    after = (await call(client, "GET", f"/v1/subscriptions/{sid}")).json()
    assert (after["plan_id"], after["pending_plan_id"]) == ("metered@v2", None)

    await _calls(client, cid, sid, "m_call", 10)
    assert (await call(client, "POST", "/v1/clock/advance", {"seconds": 32 * 86_400})).status_code == 200
    _, second = await _close_lines(client, cid, 2)
    assert ("usage", "m_calls", 100) in second
    assert real_worker.poll() is None, "the worker exited"


async def test_a_bulk_migration_sends_one_command_per_subscription_once(  # type: ignore[no-untyped-def]
        client: httpx.AsyncClient, real_worker: subprocess.Popen[bytes], container) -> None:
    import sqlalchemy as sa

    from shared.adapters.postgres.schema.core import outbox

    await call(client, "POST", "/v1/meters", {**METER, "id": "b_calls", "event_type": "b_call"})
    v1 = {**PLAN, "id": "bulk", "meters": {"b_calls": {"unit_price": "0.05", "overage": "bill"}}}
    assert (await call(client, "POST", "/v1/plans", v1)).status_code == 201
    sids = []
    for _ in range(2):
        customer = await onboard(client, payment_method_id="pm_card_visa")
        created = await call(client, "POST", "/v1/subscriptions", {"customer_id": customer["customer_id"],
                                                                  "plan_id": "bulk"})
        assert created.status_code == 201, created.text
        sids.append(created.json()["subscription_id"])
    v2 = {k: v for k, v in v1.items() if k != "id"} | {"price": "25.00"}
    assert (await call(client, "POST", "/v1/plans/bulk/versions", v2)).status_code == 201

    sent = await client.post("/v1/plans/bulk/migrate", json={"from_version": 1}, headers=ADMIN)
    assert sent.status_code == 202, sent.text
    assert sorted(c["subscription_id"] for c in sent.json()["commands"]) == sorted(sids)
    again = await client.post("/v1/plans/bulk/migrate", json={"from_version": 1}, headers=ADMIN)
    assert again.json()["commands"] == sent.json()["commands"]  # the same command ids: nothing sent twice
    ids = [uuid.UUID(c["command_id"]) for c in sent.json()["commands"]]
    with container.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(outbox)
                            .where(outbox.c.event_id.in_(ids))).scalar_one() == 2

    async def scheduled() -> bool:
        views = [(await call(client, "GET", f"/v1/subscriptions/{sid}")).json() for sid in sids]
        return all((v["plan_id"], v["pending_plan_id"]) == ("bulk", "bulk@v2") for v in views)
    await until(scheduled, "both subscriptions scheduled to move to bulk@v2 at their period end")
    same = await call(client, "POST", "/v1/plans/bulk/migrate", {"from_version": 2, "to_version": 2})
    assert (same.status_code, same.json()["errors"][0]["field"]) == (422, "to_version"), same.text


async def test_a_plan_priced_in_two_currencies_bills_a_usd_and_a_eur_customer_each_in_theirs(
        client: httpx.AsyncClient, real_worker: subprocess.Popen[bytes]) -> None:
    """Plan global: USD 20.00 (0.05 a call) and, its EUR price list, EUR 18.00 (0.04 a call). A USD customer
    and a EUR customer subscribe to "global": the start invoices charge USD 20.00 and EUR 18.00; 10 calls
    each in the first period close at USD 0.50 and EUR 0.40."""
    meter = {"id": "global_calls", "name": "Calls", "unit": "call", "event_type": "global_call",
             "aggregation": "count"}
    assert (await call(client, "POST", "/v1/meters", meter)).status_code == 201
    plan = {"id": "global", "name": "Global", "family": "global", "interval": "month", "currency": "USD",
            "price": "20.00", "meters": {"global_calls": {"unit_price": "0.05", "overage": "bill"}},
            "prices": {"EUR": {"price": "18.00", "meters": {"global_calls": {"unit_price": "0.04",
                                                                             "overage": "bill"}}}}}
    created = await call(client, "POST", "/v1/plans", plan)
    assert created.status_code == 201, created.text
    subscribed = {}
    for currency in ("USD", "EUR"):
        cid = (await onboard(client, payment_method_id="pm_card_visa", currency=currency))["customer_id"]
        sub = await call(client, "POST", "/v1/subscriptions", {"customer_id": cid, "plan_id": "global"})
        assert sub.status_code == 201, sub.text
        subscribed[currency] = (cid, sub.json())

    async def lines(cid: str, kind: str) -> list[tuple[str, str, int]]:
        found = []
        for invoice in (await call(client, "GET", f"/v1/customers/{cid}/invoices")).json()["data"]:
            view = (await call(client, "GET", f"/v1/invoices/{invoice['invoice_id']}")).json()
            found += [(view["currency"], line["kind"], line["amount_minor"]) for line in view.get("lines", [])
                      if line["kind"] == kind]
        return found

    for currency, fee in (("USD", 2000), ("EUR", 1800)):
        cid, sub = subscribed[currency]
        assert sub["plan_id"] == ("global" if currency == "USD" else "global~EUR")
        assert await until(lambda cid=cid: lines(cid, "fee"), f"the {currency} start invoice") == [
            (currency, "fee", fee)]

    now = datetime.fromisoformat((await call(client, "POST", "/v1/clock/advance", {"seconds": 3600})).json()["now"])
    subscribed_id = {cid: sub["subscription_id"] for cid, sub in subscribed.values()}
    for cid in subscribed_id:
        batch = [{"transaction_id": f"tx-{uuid.uuid4().hex[:12]}", "customer_id": cid, "event_type": "global_call",
                  "timestamp": now.isoformat(), "properties": {}} for _ in range(10)]
        ingested = await call(client, "POST", "/v1/ingest", batch)
        assert ingested.status_code == 200 and ingested.json()["accepted"] == 10, ingested.text

        async def counted(cid: str = cid) -> bool:
            body = (await call(client, "GET", f"/v1/subscriptions/{subscribed_id[cid]}/usage")).json()
            return any(m["meter_id"] == "global_calls" and int(float(m["quantity"])) == 10
                       for m in body.get("meters", []))
        await until(counted, "10 calls materialised")
    assert (await call(client, "POST", "/v1/clock/advance", {"seconds": 32 * 86_400})).status_code == 200
    for currency, usage in (("USD", 50), ("EUR", 40)):
        cid, _ = subscribed[currency]
        assert await until(lambda cid=cid: lines(cid, "usage"), f"the {currency} close") == [
            (currency, "usage", usage)]

    # a second version keeps its price lists; the bulk migration moves both subscriptions, each to its currency's
    v2 = {k: v for k, v in plan.items() if k != "id"} | {"price": "22.00", "prices": {"EUR": {
        "price": "19.80", "meters": {"global_calls": {"unit_price": "0.04", "overage": "bill"}}}}}
    assert (await call(client, "POST", "/v1/plans/global/versions", v2)).status_code == 201
    sent = await client.post("/v1/plans/global/migrate", json={"from_version": 1}, headers=ADMIN)
    assert sent.status_code == 202, sent.text
    assert len(sent.json()["commands"]) == 2

    async def scheduled() -> bool:
        views = {c: (await call(client, "GET", f"/v1/subscriptions/{s['subscription_id']}")).json()
                 for c, (_, s) in subscribed.items()}
        return all(views[c]["pending_plan_id"] == target for c, target in (("USD", "global@v2"),
                                                                            ("EUR", "global@v2~EUR")))
    await until(scheduled, "both subscriptions scheduled to global@v2 in their currency")
    assert real_worker.poll() is None, "the worker exited"

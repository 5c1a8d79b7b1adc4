"""Usage tiers over HTTP against the real edge and PostgreSQL: included credits in money, the free tier
blocked when they are gone, pay as you go up to an org's spending cap, the balance, and the synchronous
authorisation (atomic, idempotent, exact under concurrency).

The subscription and the usage rows belong to the billing worker: each test writes them as the worker
would leave them (a subscription in its current period, hourly aggregates of materialised events);
tests/integration/edge/test_pipeline.py shows the same rows written by the real worker.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from shared.adapters.postgres.schema.billing import subscriptions
from shared.adapters.postgres.schema.core import customers
from shared.adapters.postgres.schema.usage import usage_events
from tests.integration.quota.conftest import ADMIN, START, EdgeServer, admin, client, new_org

pytestmark = pytest.mark.integration

PERIOD_START = START - timedelta(days=5)
PERIOD_END = PERIOD_START + timedelta(days=31)


def _org_on(engine: sa.Engine, plan: str, seats: int = 1) -> str:
    """A customer with a live usage-tier subscription in its current period (the worker's read model)."""
    org = new_org()
    with engine.begin() as conn:
        conn.execute(customers.insert().values(customer_id=org, external_id=f"ext-{org}", kind="org", name=org,
                                               email=f"{org}@example.test", currency="USD"))
        conn.execute(subscriptions.insert().values(
            subscription_id=f"sub_{org}", customer_id=org, plan_id=plan, status="active", seats=seats,
            currency="USD", anchor_day=PERIOD_START.day, anchor_time=PERIOD_START.time(), started_at=PERIOD_START,
            current_period_start=PERIOD_START, current_period_end=PERIOD_END))
    return org


def _materialised(engine: sa.Engine, org: str, micros: int, transaction_id: str | None = None,
                  at: datetime = START - timedelta(hours=2)) -> None:
    """One inference event and its hourly aggregate, as the worker's materialiser leaves them."""
    sid = f"sub_{org}"
    bucket = at.replace(minute=0, second=0, microsecond=0)
    with engine.begin() as conn:
        conn.execute(usage_events.insert().values(
            customer_id=org, transaction_id=transaction_id or uuid.uuid4().hex, subscription_id=sid,
            event_type="inference", meter_id="inference", quantity=Decimal(micros), occurred_at=at, received_at=at))
        conn.execute(sa.text(
            "INSERT INTO usage_aggregates AS a (subscription_id, meter_id, bucket_start, quantity, event_count)"
            " VALUES (:s, 'inference', :b, :q, 1) ON CONFLICT (subscription_id, meter_id, bucket_start)"
            " DO UPDATE SET quantity = a.quantity + excluded.quantity, event_count = a.event_count + 1"),
            {"s": sid, "b": bucket, "q": Decimal(micros)})


async def _authorise(base_url: str, org: str, requests: list[tuple[str, int]]) -> list[Any]:
    async with client(base_url, max(2, len(requests))) as http:
        return list(await asyncio.gather(*(
            http.post(f"/v1/quota/orgs/{org}/spend/authorisations", headers=ADMIN,
                      json={"request_id": request_id, "quantity": quantity})
            for request_id, quantity in requests)))


async def _balance(edge: EdgeServer, org: str) -> dict[str, Any]:
    response = await admin(edge.url, "GET", f"/v1/quota/orgs/{org}/spend")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _ingest(edge: EdgeServer, org: str, micros: list[int]) -> list[dict[str, Any]]:
    events = [{"transaction_id": uuid.uuid4().hex, "customer_id": org, "event_type": "inference",
               "timestamp": START.isoformat(), "properties": {"cost_usd_micros": m}} for m in micros]
    async with client(edge.url, 2) as http:
        response = await http.post("/v1/ingest", headers=ADMIN, json=events)
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


async def test_the_free_tier_spends_its_ten_cents_of_credits_then_is_refused(
        edge: EdgeServer, engine: sa.Engine) -> None:
    org = _org_on(engine, "free")
    assert (await _balance(edge, org))["included_credits_minor"] == 10

    first, too_much, rest = [(await _authorise(edge.url, org, [(rid, q)]))[0]
                             for rid, q in (("r1", 60_000), ("r2", 50_000), ("r3", 40_000))]

    assert first.status_code == 200 and first.json()["remaining_quantity"] == 40_000
    assert too_much.status_code == 402
    assert too_much.headers["content-type"] == "application/problem+json"
    assert too_much.json()["reason"] == "included_credits_exhausted"
    assert rest.status_code == 200 and rest.json()["remaining_quantity"] == 0
    balance = await _balance(edge, org)
    assert (balance["included_remaining_minor"], balance["spend_minor"], balance["blocked"]) == (0, 0, True)
    assert balance["reason"] == "included_credits_exhausted"


async def test_included_credits_are_two_dollars_per_seat_pooled_for_a_team(edge: EdgeServer, engine: sa.Engine) -> None:
    org = _org_on(engine, "team", seats=3)
    _materialised(engine, org, 5_000_000)

    balance = await _balance(edge, org)

    assert balance["included_credits_minor"] == 600
    assert (balance["usage_cost_minor"], balance["included_remaining_minor"]) == (500, 100)
    assert (balance["spend_minor"], balance["cap_minor"], balance["limit_quantity"]) == (0, None, None)


async def test_a_paid_tier_pays_as_it_goes_until_the_cap_its_admin_set(edge: EdgeServer, engine: sa.Engine) -> None:
    org = _org_on(engine, "pro")
    _materialised(engine, org, 2_500_000)  # USD 2.50: USD 2 included, USD 0.50 pay as you go
    assert (await _authorise(edge.url, org, [("uncapped", 1_000_000)]))[0].status_code == 200

    capped = await admin(edge.url, "PUT", f"/v1/quota/orgs/{org}/spend-cap", {"amount_minor": 200})

    assert capped.status_code == 200, capped.text
    body = capped.json()
    assert (body["spend_minor"], body["cap_minor"], body["cap_remaining_minor"]) == (150, 200, 50)
    assert body["limit_quantity"] == 4_000_000 and body["remaining_quantity"] == 500_000
    over = (await _authorise(edge.url, org, [("over", 500_001)]))[0]
    assert over.status_code == 402 and over.json()["reason"] == "spend_cap_reached"
    assert (await _authorise(edge.url, org, [("fits", 500_000)]))[0].status_code == 200
    assert (await _balance(edge, org))["reason"] == "spend_cap_reached"

    lifted = await admin(edge.url, "PUT", f"/v1/quota/orgs/{org}/spend-cap", {"amount_minor": None})
    assert lifted.json()["cap_minor"] is None
    assert (await _authorise(edge.url, org, [("after-lift", 9_000_000)]))[0].status_code == 200


async def test_a_cap_in_another_currency_is_refused(edge: EdgeServer, engine: sa.Engine) -> None:
    org = _org_on(engine, "pro")
    response = await admin(edge.url, "PUT", f"/v1/quota/orgs/{org}/spend-cap",
                           {"amount_minor": 100, "currency": "EUR"})
    assert response.status_code == 422
    assert response.json()["type"].endswith("quota/currency-mismatch")


async def test_two_hundred_concurrent_authorisations_admit_exactly_what_the_cap_leaves(
        edge: EdgeServer, engine: sa.Engine) -> None:
    org = _org_on(engine, "pro")
    assert (await admin(edge.url, "PUT", f"/v1/quota/orgs/{org}/spend-cap", {"amount_minor": 100})
            ).status_code == 200
    _materialised(engine, org, 2_900_000)  # limit 3,000,000: 100,000 left

    responses = await _authorise(edge.url, org, [(f"race-{i}", 20_000) for i in range(200)])

    assert Counter(r.status_code for r in responses) == {200: 5, 402: 195}
    assert sorted(r.json()["remaining_quantity"] for r in responses if r.status_code == 200) == [
        0, 20_000, 40_000, 60_000, 80_000]
    with engine.connect() as conn:
        reserved = conn.execute(sa.text("SELECT reserved_quantity, observed_quantity, limit_quantity"
                                        " FROM spend_periods WHERE org_id = :o"), {"o": org}).one()
        events = conn.execute(sa.text("SELECT count(*) FROM outbox_messages WHERE topic = 'usage.v1'"
                                      " AND envelope->'payload'->>'customer_id' = :o"), {"o": org}).scalar_one()
    assert tuple(reserved) == (100_000, 2_900_000, 3_000_000)
    assert events == 5


async def test_fifty_concurrent_retries_of_one_authorisation_reserve_once_with_identical_answers(
        edge: EdgeServer, engine: sa.Engine) -> None:
    org = _org_on(engine, "free")

    responses = await _authorise(edge.url, org, [("same-request", 30_000)] * 50)

    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 49
    balance = await _balance(edge, org)
    assert (balance["used_quantity"], balance["authorised_quantity"]) == (30_000, 30_000)


async def test_an_authorisation_is_counted_once_after_the_worker_materialised_its_usage(
        edge: EdgeServer, engine: sa.Engine) -> None:
    org = _org_on(engine, "free")
    assert (await _authorise(edge.url, org, [("seen-twice", 30_000)]))[0].status_code == 200
    with engine.connect() as conn:
        envelope = conn.execute(sa.text("SELECT envelope FROM outbox_messages WHERE topic = 'usage.v1'"
                                        " AND envelope->'payload'->>'customer_id' = :o"), {"o": org}).scalar_one()
    payload = envelope["payload"]
    assert (payload["transaction_id"], payload["properties"]["cost_usd_micros"]) == ("seen-twice", 30_000)

    _materialised(engine, org, 30_000, transaction_id="seen-twice", at=START)
    _materialised(engine, org, 10_000)

    balance = await _balance(edge, org)
    assert (balance["used_quantity"], balance["remaining_quantity"]) == (40_000, 60_000)


async def test_ingest_refuses_events_of_a_free_org_past_its_credits_and_of_a_capped_org_past_its_cap(
        edge: EdgeServer, engine: sa.Engine) -> None:
    free = _org_on(engine, "free")
    _materialised(engine, free, 90_000)
    capped = _org_on(engine, "pro")
    assert (await admin(edge.url, "PUT", f"/v1/quota/orgs/{capped}/spend-cap", {"amount_minor": 0})
            ).status_code == 200
    _materialised(engine, capped, 2_000_000)
    uncapped = _org_on(engine, "pro")
    _materialised(engine, uncapped, 50_000_000)

    free_results = await _ingest(edge, free, [4_000, 4_000, 4_000])
    capped_results = await _ingest(edge, capped, [1])
    uncapped_results = await _ingest(edge, uncapped, [1_000_000])

    assert [r["status"] for r in free_results] == ["accepted", "accepted", "rejected"]
    assert free_results[2]["reason"] == "included_credits_exhausted"
    assert free_results[2]["errors"][0]["field"] == "properties.cost_usd_micros"
    assert [(r["status"], r["reason"]) for r in capped_results] == [("rejected", "spend_cap_reached")]
    assert [r["status"] for r in uncapped_results] == ["accepted"]
    # what this process accepted counts at once: the free org's next small event no longer fits
    assert [r["status"] for r in await _ingest(edge, free, [2_001])] == ["rejected"]


async def test_an_authorisation_whose_properties_the_worker_would_refuse_is_a_422_and_reserves_nothing(
        edge: EdgeServer, engine: sa.Engine) -> None:
    # The authorisation is the usage event: a card number or a negative quantity copied onto it would be
    # dead-lettered by the worker and the reserved spend never billed.
    org = _org_on(engine, "pro")
    async with client(edge.url, 2) as http:
        answers = [await http.post(f"/v1/quota/orgs/{org}/spend/authorisations", headers=ADMIN,
                                   json={"request_id": request_id, "quantity": 1_000, "properties": properties})
                   for request_id, properties in (("card", {"card": "4242 4242 4242 4242"}),
                                                  ("negative", {"tokens": -5}))]
    for answer in answers:
        assert answer.status_code == 422, answer.text
        assert "4242" not in answer.text
    assert "invalid_property" in answers[1].text  # the card number is already refused by the body guard
    assert (await _balance(edge, org))["spend_minor"] == 0
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM spend_reservations WHERE org_id = :org"),
                            {"org": org}).scalar_one() == 0


async def test_a_plan_created_through_the_catalog_api_is_priced_by_the_spend_gate(
        edge: EdgeServer, engine: sa.Engine) -> None:
    """The spend gate reads the stored catalog (not the YAML loaded at start): an API plan including
    USD 0.20 of inference, blocked beyond, admits 150,000 + 50,000 micros and refuses 1 more."""
    plan = {"id": "api_tier", "name": "API tier", "family": "usage_tiers", "interval": "month", "currency": "USD",
            "price": "5.00", "meters": {"inference": {"unit_price": "0.000001", "overage": "block",
                                                      "included": {"amount": "0.20", "pooling": "org"}}}}
    created = await admin(edge.url, "POST", "/v1/plans", plan)
    assert created.status_code == 201, created.text
    org = _org_on(engine, "api_tier")

    assert (await _balance(edge, org))["included_credits_minor"] == 20
    first, rest, over = [(await _authorise(edge.url, org, [(rid, q)]))[0]
                         for rid, q in (("a1", 150_000), ("a2", 50_000), ("a3", 1))]

    assert first.status_code == 200 and first.json()["remaining_quantity"] == 50_000
    assert rest.status_code == 200 and rest.json()["remaining_quantity"] == 0
    assert over.status_code == 402 and over.json()["reason"] == "included_credits_exhausted"


async def test_two_edge_processes_bursting_on_one_org_authorise_exactly_its_credits(
        edge: EdgeServer, quota_settings: Any, engine: sa.Engine) -> None:
    org = _org_on(engine, "free")  # USD 0.10 of credits: 100,000 micros, 100 authorisations of 1,000
    second = EdgeServer(quota_settings).start()
    try:
        first_half, second_half = await asyncio.gather(
            _authorise(edge.url, org, [(f"a-{i}", 1_000) for i in range(150)]),
            _authorise(second.url, org, [(f"b-{i}", 1_000) for i in range(150)]))
    finally:
        second.stop()

    statuses = Counter(r.status_code for r in [*first_half, *second_half])
    assert statuses == {200: 100, 402: 200}
    with engine.connect() as conn:
        reserved = conn.execute(sa.text("SELECT reserved_quantity FROM spend_periods WHERE org_id = :o"),
                                {"o": org}).scalar_one()
        rows = conn.execute(sa.text("SELECT count(*), sum(quantity) FROM spend_reservations WHERE org_id = :o"),
                            {"o": org}).one()
        events = conn.execute(sa.text("SELECT count(*) FROM outbox_messages WHERE topic = 'usage.v1'"
                                      " AND envelope->'payload'->>'customer_id' = :o"), {"o": org}).scalar_one()
    assert (reserved, tuple(rows), events) == (100_000, (100, 100_000), 100)


async def test_a_retry_after_the_answer_is_replayed_identically_and_reserves_nothing_more(
        edge: EdgeServer, engine: sa.Engine) -> None:
    org = _org_on(engine, "free")
    first = (await _authorise(edge.url, org, [("once", 30_000)]))[0]
    again = (await _authorise(edge.url, org, [("once", 30_000)]))[0]  # the edge remembers the org's state
    other = (await _authorise(edge.url, org, [("next", 10_000)]))[0]

    assert (first.status_code, again.status_code, again.content) == (200, 200, first.content)
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert other.json()["remaining_quantity"] == 60_000  # 100,000 - 30,000 once - 10,000
    balance = await _balance(edge, org)
    assert (balance["used_quantity"], balance["authorised_quantity"]) == (40_000, 40_000)


async def test_a_cap_raised_through_another_edge_is_honoured_by_an_edge_that_remembered_the_old_one(
        edge: EdgeServer, quota_settings: Any, engine: sa.Engine) -> None:
    org = _org_on(engine, "pro")  # USD 2 included: 2,000,000 micros, plus the cap
    assert (await admin(edge.url, "PUT", f"/v1/quota/orgs/{org}/spend-cap", {"amount_minor": 0})).status_code == 200
    second = EdgeServer(quota_settings).start()
    try:
        # within the second the edge trusts what it remembers of the org (its cap of 0 among it)
        assert (await _authorise(edge.url, org, [("within", 1_500_000)]))[0].status_code == 200
        raised = await admin(second.url, "PUT", f"/v1/quota/orgs/{org}/spend-cap", {"amount_minor": 100})
        beyond_old_cap = (await _authorise(edge.url, org, [("beyond", 1_000_000)]))[0]
    finally:
        second.stop()

    assert raised.status_code == 200
    assert beyond_old_cap.status_code == 200, beyond_old_cap.text
    assert beyond_old_cap.json()["remaining_quantity"] == 500_000  # 3,000,000 - 2,500,000


async def test_reading_an_org_s_spend_when_the_catalog_is_due_a_refresh_takes_no_second_connection(
        quota_settings: Any, engine: sa.Engine) -> None:
    # NOTE: the catalog's revision check used to check out a connection of its own while the spend read
    # held one: with every pooled connection held by such reads (50 orgs at once), each waited for another
    # and the pool timed out (503s, minutes-long runs in the bench). One connection in the pool shows it.
    from services.ingest.container import Container
    from services.ingest.service_layer.spend import SpendService
    from shared.adapters.catalog_file import load_default_catalog
    from shared.adapters.clock import ManualClock
    from shared.adapters.postgres.catalog_store import CatalogProvider

    org = _org_on(engine, "pro")
    single = sa.create_engine(quota_settings.database_url, connect_args=quota_settings.sqlalchemy_connect_args,
                              pool_size=1, max_overflow=0, pool_timeout=3)
    catalog = load_default_catalog()
    container = Container(settings=quota_settings, engine=single, producer=None, usage_producer=None,
                          stripe=None, clock=ManualClock(START), catalog=catalog,
                          catalog_provider=CatalogProvider(single, catalog, refresh_seconds=0.0))
    service = SpendService(single, ManualClock(START), catalog, lambda _error: False,
                           current_catalog=container.current_catalog)
    try:
        answer = await service.authorise(org, "one-connection", 1_000)
        spend = await service.balance(org)
    finally:
        single.dispose()

    assert answer.allowed and spend.visible_quantity == 1_000

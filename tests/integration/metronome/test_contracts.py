"""Metronome's contract pricing and contracts through the official SDK against the real edge and the REAL
billing worker: products, rate cards and rates, a contract on a rate card (a tier's per-seat fee with an
override, a monthly credit), its invoices, seats, upgrade and downgrade through v2 edit, end dates; refusals
raise the SDK's own exceptions with our problem detail.

Hand-computed: the "team" rate is 2000 cents a seat a month; a 0.9 multiplier override makes it 1800; three
seats bill 3 x 18.00 = 54.00 at the start. The module clock starts at START (10 Mar 12:00 UTC); a monthly
period runs to 10 Apr 12:00 (31 days).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import metronome
import pytest

from .conftest import START, eventually

pytestmark = pytest.mark.integration
MONTHLY = {"billing_frequency": "MONTHLY"}
ADVANCE = {"collection_schedule": "ADVANCE", "proration": {"is_prorated": True,
                                                           "invoice_behavior": "BILL_IMMEDIATELY"}}


@dataclass(frozen=True)
class Card:
    rate_card_id: str
    inference: str
    storage: str
    pro: str
    team: str


@pytest.fixture(scope="module")
def card(edge_url: str, real_worker: Any) -> Iterator[Card]:
    with metronome.Metronome(bearer_token="test-admin-key", base_url=f"{edge_url}/metronome",
                             max_retries=0) as client:
        yield make_card(client)


def make_card(client: metronome.Metronome, tag: str | None = None) -> Card:
    """Products (inference and storage on our meters, pro and team fees) and a rate card pricing them."""
    tag = tag or uuid.uuid4().hex[:6]
    products = client.v1.contracts.products
    inference = products.create(name=f"Inference {tag}", type="USAGE", billable_metric_id="inference").data.id
    storage = products.create(name=f"Storage {tag}", type="USAGE", billable_metric_id="storage").data.id
    pro = products.create(name=f"Pro {tag}", type="SUBSCRIPTION").data.id
    team = products.create(name=f"Team {tag}", type="SUBSCRIPTION").data.id
    rate_card_id = client.v1.contracts.rate_cards.create(name=f"HF tiers {tag}").data.id
    start = START - timedelta(days=1)
    client.v1.contracts.rate_cards.rates.add_many(rate_card_id=rate_card_id, rates=[
        {"product_id": pro, "entitled": True, "rate_type": "FLAT", "price": 900, "starting_at": start, **MONTHLY},
        {"product_id": team, "entitled": True, "rate_type": "FLAT", "price": 2000, "starting_at": start,
         **MONTHLY},
        {"product_id": inference, "entitled": True, "rate_type": "FLAT", "price": 0.0001, "starting_at": start},
        {"product_id": storage, "entitled": True, "rate_type": "TIERED", "starting_at": start,
         "tiers": [{"price": 0, "size": 100}, {"price": 1.8}]},
    ])
    return Card(rate_card_id, inference, storage, pro, team)


def customer(native: httpx.Client) -> str:
    """An org onboarded natively with a card (the simulated gateway charges pm_card_visa): a contract's
    invoices are paid, so the subscription stays active and changeable."""
    response = native.post("/v1/customers", json={
        "external_id": f"org-{uuid.uuid4().hex[:10]}", "kind": "org", "name": "Org", "email": "org@hf.test",
        "currency": "USD", "payment_method_id": "pm_card_visa"})
    assert response.status_code in (200, 201), response.text
    return str(response.json()["customer_id"])


def invoices(native: httpx.Client, customer_id: str) -> list[dict[str, Any]]:
    response = native.get(f"/v1/customers/{customer_id}/invoices")
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def team_contract(client: metronome.Metronome, card: Card, customer_id: str, seats: int = 3) -> str:
    return client.v1.contracts.create(
        customer_id=customer_id, rate_card_id=card.rate_card_id, starting_at=START, name="Team plan",
        subscriptions=[{**ADVANCE, "subscription_rate": {"product_id": card.team, **MONTHLY},
                        "initial_quantity": seats}],
        recurring_credits=[{"product_id": card.inference, "applicable_product_ids": [card.inference],
                            "access_amount": {"unit_price": 200}, "commit_duration": {"value": 1},
                            "priority": 1, "starting_at": START}],
        overrides=[{"product_id": card.team, "type": "MULTIPLIER", "multiplier": 0.9, "starting_at": START}],
    ).data.id


def test_products_and_rate_cards_read_back_in_metronomes_shape_across_pages(
        metronome_client: metronome.Metronome, card: Card) -> None:
    product = metronome_client.v1.contracts.products.retrieve(id=card.inference).data
    assert (product.id, product.type, product.current.billable_metric_id) == (card.inference, "USAGE", "inference")
    listed = [p.id for p in metronome_client.v1.contracts.products.list(limit=2)]  # follows next_page
    assert {card.inference, card.storage, card.pro, card.team} <= set(listed)
    assert metronome_client.v1.contracts.products.list(limit=2).next_page

    rate_card = metronome_client.v1.contracts.rate_cards.retrieve(id=card.rate_card_id).data
    assert rate_card.name.startswith("HF tiers") and rate_card.fiat_credit_type.name == "USD (cents)"
    assert card.rate_card_id in [c.id for c in metronome_client.v1.contracts.rate_cards.list(limit=1)]

    rates = list(metronome_client.v1.contracts.rate_cards.rates.list(rate_card_id=card.rate_card_id, at=START,
                                                                     limit=3))
    by_product = {r.product_id: r for r in rates}
    assert len(rates) == 4 and by_product[card.team].rate.price == 2000
    assert [(t.price, t.size) for t in by_product[card.storage].rate.tiers] == [(0, 100), (1.8, None)]
    assert by_product[card.inference].rate.price == 0.0001

    added = metronome_client.v1.contracts.rate_cards.rates.add(
        rate_card_id=card.rate_card_id, product_id=card.pro, entitled=True, rate_type="FLAT", price=950,
        starting_at=START + timedelta(days=400), billing_frequency="MONTHLY").data
    assert (added.rate_type, added.price) == ("FLAT", 950)
    [pro_now] = metronome_client.v1.contracts.rate_cards.rates.list(
        rate_card_id=card.rate_card_id, at=START, selectors=[{"product_id": card.pro}]).data
    assert pro_now.rate.price == 900  # the later rate starts next year

    retired = metronome_client.v1.contracts.products.create(name="Retired", type="FIXED").data.id
    assert metronome_client.v1.contracts.products.archive(product_id=retired).data.id == retired
    assert metronome_client.v1.contracts.products.retrieve(id=retired).data.archived_at is not None
    assert retired not in [p.id for p in metronome_client.v1.contracts.products.list()]
    assert retired in [p.id for p in metronome_client.v1.contracts.products.list(archive_filter="ARCHIVED")]


def test_a_contract_bills_its_seats_at_the_overridden_rate_and_reads_back(
        metronome_client: metronome.Metronome, native: httpx.Client, card: Card) -> None:
    cid = customer(native)
    contract_id = team_contract(metronome_client, card, cid)

    [start_invoice] = eventually(lambda: invoices(native, cid), "start invoice")
    assert start_invoice["total_minor"] == 5400  # 3 seats x 2000 x 0.9

    contract = metronome_client.v1.contracts.retrieve(contract_id=contract_id, customer_id=cid).data
    assert (contract.id, contract.customer_id, contract.current.rate_card_id) == (contract_id, cid, card.rate_card_id)
    [subscription] = contract.subscriptions or []
    assert subscription.subscription_rate.product.id == card.team
    assert [q.quantity for q in subscription.quantity_schedule] == [3]
    assert subscription.billing_periods.current is not None
    assert subscription.billing_periods.current.ending_before == START + timedelta(days=31)
    [override] = contract.current.overrides
    assert (override.type, override.multiplier) == ("MULTIPLIER", 0.9)
    [credit] = contract.current.recurring_credits or []
    assert credit.access_amount.unit_price == 200 and credit.product.id == card.inference

    v2 = metronome_client.v2.contracts.retrieve(contract_id=contract_id, customer_id=cid).data
    assert v2.id == contract_id and v2.subscriptions and v2.subscriptions[0].quantity_schedule[0].quantity == 3


def test_contracts_list_follows_the_cursor(metronome_client: metronome.Metronome, native: httpx.Client,
                                          card: Card) -> None:
    cid = customer(native)
    made = [metronome_client.v1.contracts.create(customer_id=cid, rate_card_id=card.rate_card_id,
                                                 starting_at=START, name=f"free {i}").data.id for i in range(3)]
    first = metronome_client.v1.contracts.list(customer_id=cid, limit=2)
    assert len(first.data) == 2 and first.cursor
    assert [c.id for c in metronome_client.v1.contracts.list(customer_id=cid, limit=2)] == made
    assert [c.id for c in metronome_client.v2.contracts.list(customer_id=cid, limit=1)] == made


def hour(native: httpx.Client) -> datetime:
    """The start of the billing clock's current hour (Metronome's starting_at is on an hour boundary)."""
    now = datetime.fromisoformat(native.get("/v1/clock").json()["now"])
    return now.replace(minute=0, second=0, microsecond=0)


def advance(native: httpx.Client, days: int) -> datetime:
    """Move the module's simulated clock (every test after this one sees it) and return the new now."""
    moved = native.post("/v1/clock/advance", json={"days": days})
    assert moved.status_code == 200, moved.text
    return datetime.fromisoformat(moved.json()["now"])


def test_upgrade_seats_and_downgrade_through_v2_edit_are_prorated_by_the_worker(
        metronome_client: metronome.Metronome, native: httpx.Client, card: Card) -> None:
    """Pro (9.00) from START; on day 1 (30 of 31 days left) team at 1 seat: -9.00 x 30/31 = -8.71, +20.00 x
    30/31 = +19.35, net 10.64; on day 2 (29/31 left) 3 seats: +2 x 20.00 x 29/31 = +37.42; then a downgrade to
    pro and the end of the contract at the period end."""
    cid = customer(native)
    contract_id = metronome_client.v1.contracts.create(
        customer_id=cid, rate_card_id=card.rate_card_id, starting_at=START,
        subscriptions=[{**ADVANCE, "subscription_rate": {"product_id": card.pro, **MONTHLY}}]).data.id
    [pro] = eventually(lambda: invoices(native, cid), "pro invoice")
    assert pro["total_minor"] == 900
    old = metronome_client.v2.contracts.retrieve(contract_id=contract_id, customer_id=cid).data.subscriptions[0]
    team_rate = {**ADVANCE, "subscription_rate": {"product_id": card.team, **MONTHLY}}

    day1 = advance(native, 1)
    with pytest.raises(metronome.BadRequestError) as both:  # a tier and a quantity at one instant
        metronome_client.v2.contracts.edit(
            contract_id=contract_id, customer_id=cid, update_subscriptions=[
                {"subscription_id": old.id, "ending_before": day1}],
            add_subscriptions=[{**team_rate, "initial_quantity": 3, "starting_at": day1}])
    assert both.value.body["code"] == "not_supported"  # type: ignore[index]
    metronome_client.v2.contracts.edit(
        contract_id=contract_id, customer_id=cid,
        update_subscriptions=[{"subscription_id": old.id, "ending_before": day1}],
        add_subscriptions=[{**team_rate, "starting_at": day1}])
    [team] = metronome_client.v2.contracts.retrieve(contract_id=contract_id, customer_id=cid).data.subscriptions
    assert team.subscription_rate.product.id == card.team
    change = eventually(lambda: [i for i in invoices(native, cid) if i["invoice_id"] != pro["invoice_id"]],
                        "upgrade invoice")
    assert sum(i["total_minor"] for i in change) == 1064

    day2 = advance(native, 1)
    metronome_client.v2.contracts.edit(contract_id=contract_id, customer_id=cid, update_subscriptions=[
        {"subscription_id": team.id, "quantity_updates": [{"starting_at": day2, "quantity": 3}]}])
    [seated] = metronome_client.v2.contracts.retrieve(contract_id=contract_id, customer_id=cid).data.subscriptions
    assert [q.quantity for q in seated.quantity_schedule] == [1, 3]
    [sub] = native.get(f"/v1/customers/{cid}/subscriptions").json()["data"]
    assert sub["seats"] == 3
    seats_invoices = eventually(lambda: [i for i in invoices(native, cid)
                                         if i["invoice_id"] not in {pro["invoice_id"], *(c["invoice_id"]
                                                                                         for c in change)}],
                                "seat invoice")
    assert sum(i["total_minor"] for i in seats_invoices) == 3742

    end = seated.billing_periods.current.ending_before
    assert end == START + timedelta(days=31)
    metronome_client.v2.contracts.edit(contract_id=contract_id, customer_id=cid, update_subscriptions=[
        {"subscription_id": team.id, "ending_before": end}], add_subscriptions=[
        {**ADVANCE, "subscription_rate": {"product_id": card.pro, **MONTHLY}, "initial_quantity": 3,
         "starting_at": end}])
    [sub] = native.get(f"/v1/customers/{cid}/subscriptions").json()["data"]
    assert sub["pending_plan_id"] is not None and sub["seats"] == 3  # the downgrade waits for the period end

    ended = metronome_client.v1.contracts.update_end_date(contract_id=contract_id, customer_id=cid,
                                                          ending_before=end).data
    assert ended.id == contract_id
    [sub] = native.get(f"/v1/customers/{cid}/subscriptions").json()["data"]
    assert sub["cancel_at_period_end"] is True
    assert metronome_client.v1.contracts.retrieve(contract_id=contract_id,
                                                  customer_id=cid).data.current.ending_before == end


def test_what_the_engine_cannot_bill_is_the_sdks_bad_request_with_the_field(
        metronome_client: metronome.Metronome, native: httpx.Client, card: Card) -> None:
    cid = customer(native)
    now = hour(native)  # the module clock moved on: a contract starts in the current hour
    with pytest.raises(metronome.BadRequestError) as backdated:
        metronome_client.v1.contracts.create(customer_id=cid, rate_card_id=card.rate_card_id,
                                             starting_at=now - timedelta(days=2))
    assert backdated.value.body["errors"][0]["field"] == "starting_at"  # type: ignore[index]
    with pytest.raises(metronome.BadRequestError) as refused:
        metronome_client.v1.contracts.create(
            customer_id=cid, rate_card_id=card.rate_card_id, starting_at=now,
            subscriptions=[{**ADVANCE, "collection_schedule": "ARREARS",
                            "subscription_rate": {"product_id": card.pro, **MONTHLY}}])
    body = refused.value.body
    assert isinstance(body, dict) and body["code"] == "not_supported"
    assert body["errors"][0]["field"] == "subscriptions[0].collection_schedule" and body["message"]

    with pytest.raises(metronome.BadRequestError) as unknown_field:
        metronome_client.v1.contracts.create(customer_id=cid, rate_card_id=card.rate_card_id, starting_at=now,
                                             commits=[{"type": "PREPAID", "product_id": card.pro}])
    assert unknown_field.value.body["errors"][0]["field"] == "commits"  # type: ignore[index]

    with pytest.raises(metronome.NotFoundError) as missing:
        metronome_client.v1.contracts.retrieve(contract_id=str(uuid.uuid4()), customer_id=cid)
    assert missing.value.body["code"] == "not_found"  # type: ignore[index]

    with pytest.raises(metronome.BadRequestError) as percentage:
        metronome_client.v1.contracts.rate_cards.rates.add(
            rate_card_id=card.rate_card_id, product_id=card.inference, entitled=True, rate_type="PERCENTAGE",
            starting_at=now)
    assert percentage.value.body["errors"][0]["field"] == "rate.rate_type"  # type: ignore[index]

    key = f"once-{uuid.uuid4().hex[:8]}"
    metronome_client.v1.contracts.create(customer_id=cid, rate_card_id=card.rate_card_id, starting_at=now,
                                         uniqueness_key=key)
    with pytest.raises(metronome.ConflictError):
        metronome_client.v1.contracts.create(customer_id=cid, rate_card_id=card.rate_card_id, starting_at=now,
                                             uniqueness_key=key)


def test_an_amendment_with_an_override_moves_the_contract_to_its_new_price_through_the_worker(
        metronome_client: metronome.Metronome, native: httpx.Client, card: Card) -> None:
    cid = customer(native)
    contract_id = metronome_client.v1.contracts.create(
        customer_id=cid, rate_card_id=card.rate_card_id, starting_at=hour(native),
        subscriptions=[{**ADVANCE, "subscription_rate": {"product_id": card.pro, **MONTHLY}}]).data.id
    [before] = native.get(f"/v1/customers/{cid}/subscriptions").json()["data"]
    now = datetime.fromisoformat(native.get("/v1/clock").json()["now"])

    amendment = metronome_client.v1.contracts.amend(contract_id=contract_id, customer_id=cid, starting_at=now,
                                                    overrides=[{"product_id": card.pro, "type": "OVERWRITE",
                                                                "overwrite_rate": {"rate_type": "FLAT",
                                                                                   "price": 1200},
                                                                "starting_at": now}]).data
    assert amendment.id
    contract = metronome_client.v1.contracts.retrieve(contract_id=contract_id, customer_id=cid).data
    [override] = contract.current.overrides
    assert (override.type, override.overwrite_rate.price) == ("OVERWRITE", 1200)  # type: ignore[union-attr]
    assert contract.initial.overrides == []
    [after] = native.get(f"/v1/customers/{cid}/subscriptions").json()["data"]
    assert after["plan_id"] != before["plan_id"] and after["status"] == "active"
    plan = native.get(f"/v1/plans/{after['plan_id'].split('@')[0]}").json()
    assert plan["definition"]["seat_price"] == "12.00"

"""The same month through the Metronome SDK and through our native API yields the same invoices to the cent
(real edge, REAL billing worker, one simulated clock).

Scenario, each side its own org: Pro (9.00 a seat a month, inference at USD 0.000001 a micro-dollar with 2.00
included each month, storage free to 100 then 0.018); day 1 an upgrade to Team (20.00 a seat) at once; day 2
three seats; usage of 3,000,000 inference micro-dollars and 150 storage units; the clock runs to the period end
and the worker closes it. The SDK side makes its plans from a rate card and a contract (the recurring credit is
the included credit); the native side writes the same prices as catalog plans by hand.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import metronome
import pytest

from .conftest import START, eventually
from .test_contracts import ADVANCE, MONTHLY, customer, invoices, make_card

pytestmark = pytest.mark.integration
USAGE_METERS = {"inference": {"overage": "bill", "unit_price": "0.000001",
                              "included": {"amount": "2.00", "pooling": "org"}},
                "storage": {"overage": "bill", "pricing": {"model": "graduated", "tiers": [
                    {"up_to": "100", "unit_price": "0"}, {"up_to": None, "unit_price": "0.018"}]}}}


def _native_plan(native: httpx.Client, plan_id: str, seat_price: str) -> None:
    response = native.post("/v1/plans", json={
        "id": plan_id, "name": plan_id, "family": "native_tiers", "interval": "month", "currency": "USD",
        "price": "0", "seat_price": seat_price, "change_timing": "immediate", "meters": USAGE_METERS})
    assert response.status_code == 201, response.text


def _advance(native: httpx.Client, **span: int) -> datetime:
    moved = native.post("/v1/clock/advance", json=span)
    assert moved.status_code == 200, moved.text
    return datetime.fromisoformat(moved.json()["now"])


def _usage(customer_id: str, at: datetime) -> list[dict[str, Any]]:
    tag = uuid.uuid4().hex[:8]
    return [{"transaction_id": f"inf-{tag}", "customer_id": customer_id, "event_type": "inference",
             "timestamp": at.isoformat(), "properties": {"cost_usd_micros": 3_000_000}},
            {"transaction_id": f"sto-{tag}", "customer_id": customer_id, "event_type": "storage_usage",
             "timestamp": at.isoformat(), "properties": {"gb_months": 150}}]


def _amounts(items: list[dict[str, Any]]) -> list[tuple[str, int, int, list[int]]]:
    """What must be equal: per invoice in issue order, its kind, total, credits applied and line amounts."""
    ordered = sorted(items, key=lambda i: (i["issued_at"] or "", i["kind"], i["total_minor"]))
    return [(i["kind"], i["total_minor"], i["credits_applied_minor"], sorted(line["amount_minor"]
                                                                             for line in i["lines"]))
            for i in ordered]


def test_a_month_through_the_sdk_and_through_the_native_api_bills_the_same(
        metronome_client: metronome.Metronome, native: httpx.Client) -> None:
    card = make_card(metronome_client)
    tag = uuid.uuid4().hex[:6]
    _native_plan(native, f"pro_{tag}", "9.00")
    _native_plan(native, f"team_{tag}", "20.00")
    sdk_org, native_org = customer(native), customer(native)

    contract_id = metronome_client.v1.contracts.create(
        customer_id=sdk_org, rate_card_id=card.rate_card_id, starting_at=START,
        subscriptions=[{**ADVANCE, "subscription_rate": {"product_id": card.pro, **MONTHLY}}],
        recurring_credits=[{"product_id": card.inference, "applicable_product_ids": [card.inference],
                            "access_amount": {"unit_price": 200}, "commit_duration": {"value": 1},
                            "priority": 1, "starting_at": START}]).data.id
    created = native.post("/v1/subscriptions", json={"customer_id": native_org, "plan_id": f"pro_{tag}"})
    assert created.status_code == 201, created.text
    subscription_id = created.json()["subscription_id"]

    day1 = _advance(native, days=1)
    [pro] = metronome_client.v2.contracts.retrieve(contract_id=contract_id, customer_id=sdk_org).data.subscriptions
    metronome_client.v2.contracts.edit(
        contract_id=contract_id, customer_id=sdk_org,
        update_subscriptions=[{"subscription_id": pro.id, "ending_before": day1}],
        add_subscriptions=[{**ADVANCE, "subscription_rate": {"product_id": card.team, **MONTHLY},
                            "starting_at": day1}])
    upgraded = native.post(f"/v1/subscriptions/{subscription_id}/change-plan",
                           json={"plan_id": f"team_{tag}", "timing": "immediate"})
    assert upgraded.status_code == 200, upgraded.text

    day2 = _advance(native, days=1)
    [team] = metronome_client.v2.contracts.retrieve(contract_id=contract_id, customer_id=sdk_org).data.subscriptions
    metronome_client.v2.contracts.edit(contract_id=contract_id, customer_id=sdk_org, update_subscriptions=[
        {"subscription_id": team.id, "quantity_updates": [{"starting_at": day2, "quantity": 3}]}])
    seated = native.post(f"/v1/subscriptions/{subscription_id}/seats", json={"seats": 3})
    assert seated.status_code == 200, seated.text

    metronome_client.v1.usage.ingest(usage=_usage(sdk_org, day2))  # type: ignore[arg-type]
    sent = native.post("/v1/ingest", json=_usage(native_org, day2))
    assert sent.status_code == 200 and sent.json()["accepted"] == 2, sent.text

    end = team.billing_periods.current.ending_before
    _advance(native, seconds=int((end - day2).total_seconds()) + 60)
    closed = {org: eventually(lambda org=org: [i for i in invoices(native, org) if i["kind"] == "period_close"]
                              or None, f"period close of {org}", timeout=120) for org in (sdk_org, native_org)}
    sdk_invoices, native_invoices = invoices(native, sdk_org), invoices(native, native_org)
    assert _amounts(sdk_invoices) == _amounts(native_invoices)
    [close] = closed[sdk_org]
    # next month's fee 3 x 20.00 + inference (3.00 - 2.00 included) + storage 50 x 0.018
    assert close["total_minor"] == 6000 + 100 + 90, close
    assert sum(i["total_minor"] for i in sdk_invoices) == 900 + 1064 + 3742 + 6190
    assert end == START + timedelta(days=31)

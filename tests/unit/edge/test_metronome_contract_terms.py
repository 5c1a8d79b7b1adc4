"""A Metronome contract's terms -> a plan of our catalog (pure): prices in USD cents become the catalog's
decimal amounts, overrides are folded in, a recurring credit is the meter's included credit, and what cannot be
billed exactly is refused with the field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from services.ingest.metronome.contract_terms import (
    Invalid,
    Product,
    RateCard,
    RateRow,
    Terms,
    Unsupported,
    override_entry,
    plan_definition,
    recurring_credit_entry,
    subscription_entry,
)
from services.ingest.metronome.credit_shapes import Entry, GrantFacts, customer_ledger
from services.ingest.service_layer.metronome_contracts import _timing
from services.ingest.service_layer.refusals import MetronomeRefusal
from shared.domain.catalog import Catalog

AT = datetime(2026, 3, 10, 12, tzinfo=UTC)
CARD = RateCard("rc-1", "HF tiers")
PRODUCTS = {p.product_id: p for p in (
    Product("inf", "Inference", "USAGE", "inference"), Product("sto", "Storage", "USAGE", "storage"),
    Product("team", "Team", "SUBSCRIPTION"), Product("pro", "Pro", "SUBSCRIPTION"))}
RATES = [
    RateRow("team", AT - timedelta(days=1), True, {"rate_type": "FLAT", "price": "2000"}),
    RateRow("pro", AT - timedelta(days=1), True, {"rate_type": "FLAT", "price": "900"}),
    RateRow("pro", AT + timedelta(days=30), True, {"rate_type": "FLAT", "price": "950"}),
    RateRow("inf", AT - timedelta(days=1), True, {"rate_type": "FLAT", "price": "0.0001"}),
    RateRow("sto", AT - timedelta(days=1), True,
            {"rate_type": "TIERED", "tiers": [{"price": "0", "size": "100"}, {"price": "1.8"}]}),
]
ADVANCE = {"collection_schedule": "ADVANCE", "proration": {"is_prorated": True}}


def subscription(product: str, quantity: int = 1, **extra: object) -> dict[str, object]:
    return subscription_entry({**ADVANCE, "subscription_rate": {"product_id": product, "billing_frequency": "MONTHLY"},
                               "initial_quantity": quantity, **extra}, "s1", "subscriptions[0]")


def credit(cents: int = 200, **extra: object) -> dict[str, object]:
    return recurring_credit_entry({"product_id": "inf", "applicable_product_ids": ["inf"],
                                   "access_amount": {"unit_price": cents}, "commit_duration": {"value": 1},
                                   "priority": 1, "starting_at": AT, **extra}, "c1", "recurring_credits[0]")


def multiplier(product: str, value: str) -> dict[str, object]:
    return override_entry({"product_id": product, "type": "MULTIPLIER", "multiplier": Decimal(value)}, "o1",
                          "overrides[0]", AT, AT)


def test_a_team_contract_is_a_per_seat_plan_with_its_overridden_fee_usage_prices_and_monthly_credit() -> None:
    terms = Terms(subscription("team", 3), (credit(),), (multiplier("team", "0.9"),))
    plan = plan_definition(CARD, PRODUCTS, RATES, terms, AT)
    assert (plan["seat_price"], plan["price"], plan["interval"], plan["change_timing"]) == (
        "18.00", "0", "month", "immediate")
    assert plan["meters"]["inference"] == {"overage": "bill", "unit_price": "0.000001",
                                           "included": {"amount": "2.00", "pooling": "org"}}
    assert plan["meters"]["storage"]["pricing"] == {"model": "graduated", "tiers": [
        {"up_to": "100", "unit_price": "0.00"}, {"up_to": None, "unit_price": "0.018"}]}
    assert plan["name"] == "HF tiers: Team" and plan["family"] == "mx-rc-1"
    catalog = Catalog.from_dict({"version": 1, "currency": "USD", "meters": [
        {"id": "inference", "name": "Inference", "unit": "usd_micro", "event_type": "inference",
         "aggregation": "sum", "value_property": "cost_usd_micros"},
        {"id": "storage", "name": "Storage", "unit": "gb", "event_type": "storage", "aggregation": "sum",
         "value_property": "gb"}], "plans": [plan]})  # our catalog's own validation takes it
    assert catalog.plan(plan["id"]).fee(3).amount_minor == 5400


def test_the_plan_id_is_the_terms_hash_and_rates_are_read_at_the_instant() -> None:
    pro = Terms(subscription("pro"))
    assert plan_definition(CARD, PRODUCTS, RATES, pro, AT)["id"] == plan_definition(CARD, PRODUCTS, RATES, pro,
                                                                                     AT)["id"]
    assert plan_definition(CARD, PRODUCTS, RATES, pro, AT)["seat_price"] == "9.00"
    later = plan_definition(CARD, PRODUCTS, RATES, pro, AT + timedelta(days=31))
    assert later["seat_price"] == "9.50" and later["id"] != plan_definition(CARD, PRODUCTS, RATES, pro, AT)["id"]
    free = plan_definition(CARD, PRODUCTS, RATES, Terms(None), AT)
    assert "seat_price" not in free and free["name"] == "HF tiers"


@pytest.mark.parametrize(("build", "field"), [
    (lambda: subscription("pro", collection_schedule="ARREARS"), "subscriptions[0].collection_schedule"),
    (lambda: subscription("pro", quantity_management_mode="SEAT_BASED"), "subscriptions[0].quantity_management_mode"),
    (lambda: subscription_entry({**ADVANCE, "subscription_rate": {"product_id": "pro", "billing_frequency": "WEEKLY"}},
                                "s", "subscriptions[0]"), "subscriptions[0].subscription_rate.billing_frequency"),
    (lambda: credit(applicable_product_ids=["inf", "sto"]), "recurring_credits[0].applicable_product_ids"),
    (lambda: credit(commit_duration={"value": 3}), "recurring_credits[0].commit_duration"),
    (lambda: override_entry({"product_id": "pro", "type": "TIERED"}, "o", "overrides[0]", AT, AT),
     "overrides[0].type"),
    (lambda: override_entry({"product_id": "pro", "multiplier": 2}, "o", "overrides[0]", AT,
                            AT + timedelta(days=1)), "overrides[0].starting_at"),
])
def test_what_cannot_be_billed_exactly_is_refused_with_its_field(build: object, field: str) -> None:
    with pytest.raises(Unsupported) as refused:
        build()  # type: ignore[operator]
    assert refused.value.field == field


def test_a_fee_that_would_not_come_to_whole_cents_or_a_product_off_the_card_is_refused() -> None:
    with pytest.raises(Unsupported) as fractional:
        plan_definition(CARD, PRODUCTS, RATES, Terms(subscription("pro"), (), (multiplier("pro", "0.333"),)), AT)
    assert fractional.value.field == "overrides.multiplier"
    with pytest.raises(Invalid):
        plan_definition(CARD, PRODUCTS, RATES, Terms(subscription("inf")), AT)
    with pytest.raises(Invalid):
        plan_definition(CARD, {**PRODUCTS, "ent": Product("ent", "Enterprise", "SUBSCRIPTION")}, RATES,
                        Terms(subscription("ent")), AT)


def test_a_customer_ledger_carries_the_balance_before_the_window_and_runs_through_it() -> None:
    entries = [Entry("g1", "grant", 500, AT, None), Entry("g1", "consume", -120, AT + timedelta(days=3), "in_1"),
               Entry("g1", "void", -380, AT + timedelta(days=5), None)]
    shown = customer_ledger("cust", [_grant(entries)], starting_on=AT + timedelta(days=1), ending_before=None,
                            descending=False)
    [ledger] = shown["ledgers"]
    assert ledger["starting_balance"]["including_pending"] == 500
    assert [(e["amount"], e["running_balance"], e["reason"]) for e in ledger["entries"]] == [
        (-120, 380, "Usage"), (-380, 0, "Voided")]
    assert ledger["ending_balance"]["including_pending"] == 0


def _grant(entries: list[Entry]) -> GrantFacts:
    return GrantFacts("g1", "cust", "Launch", 500, 0, 1, AT, None, entries)


def test_a_change_applies_in_the_current_hour_or_at_the_period_end_never_backdated() -> None:
    now, period = AT + timedelta(minutes=20), (AT - timedelta(days=3), AT + timedelta(days=28))
    assert _timing(AT, now, period, "f") == "immediate"  # Metronome's hour boundary
    assert _timing(period[1], now, period, "f") == "period_end"
    for wrong in (AT - timedelta(hours=1), AT + timedelta(days=2)):
        with pytest.raises(MetronomeRefusal) as refused:
            _timing(wrong, now, period, "update_subscriptions[0].ending_before")
        assert refused.value.fields == [("update_subscriptions[0].ending_before", refused.value.fields[0][1])]
        assert refused.value.code == "not_supported"

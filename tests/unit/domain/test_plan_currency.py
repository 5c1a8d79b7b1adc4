from __future__ import annotations

from decimal import Decimal

import pytest

from shared.domain.catalog import Catalog
from shared.domain.coupons import plan_family
from shared.domain.errors import CatalogError, CurrencyMismatchError

pytestmark = pytest.mark.unit

MINIMAL = {"version": 1, "currency": "USD", "meters": [], "plans": [
    {"id": "starter", "name": "Starter", "family": "classic", "interval": "month", "price": "12.50"}]}


def test_a_plan_sold_in_the_customers_currency_is_accepted() -> None:
    Catalog.from_dict(MINIMAL).plan("starter").require_sold_in("USD")


def test_a_plan_sold_in_another_currency_is_refused_naming_both() -> None:
    with pytest.raises(CurrencyMismatchError) as refused:
        Catalog.from_dict(MINIMAL).plan("starter").require_sold_in("EUR")
    assert (refused.value.left, refused.value.right) == ("USD", "EUR")


PRICED = {"version": 1, "currency": "USD", "meters": [
    {"id": "calls", "name": "Calls", "unit": "call", "event_type": "call", "aggregation": "count"}], "plans": [
    {"id": "global", "name": "Global", "family": "g", "interval": "month", "price": "20.00",
     "meters": {"calls": {"unit_price": "0.05", "overage": "bill"}},
     "prices": {"EUR": {"price": "18.00", "meters": {"calls": {"unit_price": "0.04", "overage": "bill"}}},
                "JPY": {"price": "3000", "meters": {"calls": {"unit_price": "7", "overage": "bill"}}}}}]}


def test_a_plan_priced_in_several_currencies_is_sold_in_each_at_its_own_amounts() -> None:
    catalog = Catalog.from_dict(PRICED)

    usd, eur, jpy = (catalog.plan_in("global", c) for c in ("USD", "EUR", "JPY"))

    assert (usd.id, usd.price.amount_minor, usd.currency) == ("global", 2000, "USD")
    assert (eur.id, eur.price.amount_minor, eur.currency, eur.name) == ("global~EUR", 1800, "EUR", "Global")
    assert (jpy.id, jpy.price.amount_minor) == ("global~JPY", 3000)
    eur_calls = eur.pricing_for("calls")
    assert eur_calls is not None and eur_calls.unit_price is not None
    assert (eur_calls.unit_price.amount, eur_calls.unit_price.currency) == (Decimal("0.04"), "EUR")
    eur.require_sold_in("EUR")
    with pytest.raises(CurrencyMismatchError):  # no GBP price list: the plan itself, refused
        catalog.plan_in("global", "GBP").require_sold_in("GBP")
    assert plan_family("global@v3~EUR") == plan_family("global~EUR") == "global"


@pytest.mark.parametrize(("prices", "where"), [
    ({"EUR": {"meters": {"calls": {"unit_price": "0.04", "overage": "bill"}}}}, "prices.EUR.price"),
    ({"EUR": {"price": "18.00"}}, "prices.EUR.meters"),
    ({"USD": {"price": "1.00", "meters": {}}}, "prices.USD"),
    ({"EUR": {"price": "18.00", "name": "x", "meters": {}}}, "prices.EUR"),
])
def test_a_price_list_restates_its_amounts_in_its_currency(prices: dict[str, object], where: str) -> None:
    document = {**PRICED, "plans": [{**PRICED["plans"][0], "prices": prices}]}  # type: ignore[index]
    with pytest.raises(CatalogError, match=where.replace(".", r"\.")):
        Catalog.from_dict(document)

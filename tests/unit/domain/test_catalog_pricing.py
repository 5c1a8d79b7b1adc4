"""The catalog's `pricing` block of a plan's meter: the models it accepts and the field each refusal names."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest

from shared.domain.catalog import Catalog
from shared.domain.errors import CatalogError
from shared.domain.money import Money
from shared.domain.pricing import PricingModel, Tier
from tests.fixtures import priced_catalog

pytestmark = pytest.mark.unit

GRADUATED: dict[str, Any] = {"model": "graduated", "tiers": [
    {"up_to": 1000, "unit_price": "0.10"}, {"up_to": 5000, "unit_price": "0.08", "flat_fee": "20.00"},
    {"up_to": None, "unit_price": "0.05"}]}


def document(pricing: object, **extra: object) -> dict[str, Any]:
    return {"version": 1, "currency": "USD",
            "meters": [{"id": "api_calls", "unit": "call", "event_type": "api_call", "aggregation": "count"}],
            "plans": [{"id": "api", "name": "API", "family": "priced", "interval": "month", "price": "0",
                       "meters": {"api_calls": {"overage": "bill", "pricing": pricing, **extra}}}]}


def test_the_test_catalog_loads_beside_the_shipped_ones_with_its_models() -> None:
    catalog = priced_catalog()
    price = catalog.plan("api_graduated_flat").meters["api_calls"].price  # type: ignore[index]
    assert price is not None and price.model is PricingModel.GRADUATED
    assert price.tiers[0] == Tier(Decimal(1000), Decimal("0.10"), Decimal("5.00"))
    assert price.tiers[-1].up_to is None
    emails = catalog.plan("emails_package").meters["emails"].price  # type: ignore[index]
    assert emails is not None and emails.package_size == Decimal(1000) and emails.minimum == Money(1000, "USD")
    # the shipped plans keep their unit prices (no pricing block): what the demo audits is unchanged
    assert catalog.plan("pro").meters["inference"].price is None  # type: ignore[index]


def test_a_per_unit_pricing_block_also_sets_the_unit_price() -> None:
    catalog = Catalog.from_dict(document({"model": "per_unit", "unit_price": "0.002", "minimum": "5.00"}))
    pricing = catalog.plan("api").meters["api_calls"]  # type: ignore[index]
    assert pricing.unit_price is not None and pricing.unit_price.amount == Decimal("0.002")
    assert pricing.price is not None and pricing.price.minimum == Money(500, "USD")


@pytest.mark.parametrize(("pricing", "extra", "field"), [
    ({"model": "tiered"}, {}, "pricing.model: expected one of per_unit, package, graduated, volume"),
    ({"model": "graduated"}, {}, "pricing.tiers: is required"),
    ({"model": "graduated", "tiers": []}, {}, "pricing: tiers: at least one tier"),
    ({"model": "volume", "tiers": [{"up_to": 10, "unit_price": "1"}, {"up_to": 10, "unit_price": "1"},
                                   {"up_to": None}]}, {}, "pricing: tiers[1].up_to: 10 must be greater than 10"),
    ({"model": "volume", "tiers": [{"up_to": 10, "unit_price": "1"}]}, {},
     "pricing: tiers[0].up_to: the last tier must be unbounded"),
    ({"model": "graduated", "tiers": [{"unit_price": "1"}]}, {}, "pricing.tiers[0].up_to: is required"),
    ({"model": "graduated", "tiers": [{"up_to": None, "unit_price": 0.1}]}, {},
     "pricing.tiers[0].unit_price: write decimal amounts as quoted strings"),
    ({"model": "graduated", "tiers": [{"up_to": None, "unit_price": "-1"}]}, {},
     "pricing.tiers[0].unit_price: must not be negative"),
    ({"model": "graduated", "tiers": [{"up_to": None, "flat_fee": "0.001"}]}, {},
     "pricing.tiers[0].flat_fee: 0.001 has more decimals than USD allows"),
    ({"model": "graduated", "tiers": [{"up_to": None, "price": "1"}]}, {},
     "pricing.tiers[0]: unknown field(s) price"),
    ({"model": "package", "package_size": 0, "package_price": "2.00"}, {}, "pricing.package_size: must be >= 1"),
    ({"model": "package", "package_size": 1000}, {}, "pricing.package_price: is required"),
    ({**GRADUATED, "package_size": 1000}, {}, "pricing.package_size: does not apply to a graduated price"),
    ({**GRADUATED, "minimum": "-1.00"}, {}, "pricing.minimum: must not be negative"),
    (GRADUATED, {"unit_price": "0.10"}, "unit_price: give either unit_price or pricing, not both"),
])
def test_a_malformed_pricing_block_is_refused_naming_the_field(pricing: object, extra: dict[str, object],
                                                                field: str) -> None:
    with pytest.raises(CatalogError) as refused:
        Catalog.from_dict(document(pricing, **extra))
    assert f"plans[api].meters.api_calls.{field}" in str(refused.value)


def test_money_credits_need_a_price_which_a_pricing_block_gives() -> None:
    data = document(copy.deepcopy(GRADUATED), included={"amount": "2.00"})
    assert Catalog.from_dict(data).plan("api").meters["api_calls"].price is not None  # type: ignore[index]


# --- dimensional prices --------------------------------------------------------------------------------


def dimensional(pricing_extra: dict[str, Any], dimension: str | None = "model") -> dict[str, Any]:
    data = document(None, unit_price="0.000002", **pricing_extra)
    del data["plans"][0]["meters"]["api_calls"]["pricing"]
    if dimension is not None:
        data["meters"][0]["dimension"] = dimension
    return data


def test_a_meter_priced_per_dimension_value_falls_back_to_its_own_price_for_other_values() -> None:
    plan = priced_catalog().plan("llm_tokens")
    gpt = plan.pricing_for("tokens/gpt-4o")
    llama = plan.pricing_for("tokens/meta-llama/Llama-3-70b")  # a value may hold the separator itself
    other = plan.pricing_for("tokens/mistral-large")
    assert gpt is not None and gpt.price is not None and gpt.unit_price is not None
    assert (gpt.meter_id, gpt.meter_name, gpt.unit_price.amount) == (
        "tokens/gpt-4o", "Inference tokens (gpt-4o)", Decimal("0.00001"))
    assert llama is not None and llama.price is not None and llama.price.model is PricingModel.GRADUATED
    assert llama.unit_price is None
    assert other is not None and other.price is not None and other.price.model is PricingModel.PER_UNIT
    assert other.unit_price is not None
    assert other.unit_price.amount == Decimal("0.000002") and other.meter_name == "Inference tokens (mistral-large)"
    assert plan.pricing_for("unknown/gpt-4o") is None


@pytest.mark.parametrize(("extra", "dimension", "field"), [
    ({"dimensions": {"gpt-4o": {"model": "per_unit", "unit_price": "0.00001"}}}, None,
     "dimensions: the meter has no dimension"),
    ({"dimensions": {"gpt-4o": {"model": "graduated"}}}, "model", "dimensions.gpt-4o.tiers: is required"),
    ({"dimensions": {"gpt-4o": "0.00001"}}, "model", "dimensions.gpt-4o: expected a mapping"),
    ({"included": {"units": 100}}, "model", "included: included credits are not drawn from a meter with a dimension"),
])
def test_a_malformed_dimension_price_is_refused_naming_the_field(extra: dict[str, Any], dimension: str | None,
                                                                 field: str) -> None:
    with pytest.raises(CatalogError) as refused:
        Catalog.from_dict(dimensional(extra, dimension))
    assert f"plans[api].meters.api_calls.{field}" in str(refused.value)

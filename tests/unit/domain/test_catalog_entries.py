"""One validation for the YAML files and the catalog API: a document split into storable entries, and the
field of a validation error relative to its entry (what the API answers)."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.adapters.catalog_file import load_catalog_file
from shared.domain.catalog import Catalog, catalog_document, catalog_entries, catalog_error_field
from shared.domain.errors import CatalogError

DOCUMENT: dict[str, Any] = {
    "version": 1, "currency": "EUR",
    "meters": [{"id": "calls", "unit": "call", "event_type": "api_call", "aggregation": "count"}],
    "plans": [{"id": "starter", "name": "Starter", "family": "api", "interval": "month", "price": "19.00",
               "meters": {"calls": {"unit_price": "0.002", "overage": "bill"}}}],
    "coupons": [{"id": "TEN", "amount_off": "10.00", "duration": "once", "redeem_by": date(2030, 1, 1)},
                {"id": "HALF", "percent_off": "50", "duration": "once"}],
}


def test_entries_carry_the_documents_currency_and_rebuild_the_same_catalog() -> None:
    entries = catalog_entries(DOCUMENT)
    assert entries.plans["starter"]["currency"] == "EUR"
    assert entries.coupons["TEN"]["currency"] == "EUR" and "currency" not in entries.coupons["HALF"]
    assert entries.coupons["TEN"]["redeem_by"] == "2030-01-01T00:00:00+00:00"
    rebuilt = catalog_document(entries.meters.values(), entries.plans.values(), entries.coupons.values())
    assert Catalog.from_dict(rebuilt) == Catalog.from_dict(DOCUMENT)


def test_the_yaml_file_and_an_api_body_are_refused_by_the_same_rule(tmp_path: Path) -> None:
    bad = {**DOCUMENT, "plans": [{**DOCUMENT["plans"][0], "price": "-1.00"}]}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad), encoding="utf-8")
    with pytest.raises(CatalogError) as from_file:
        load_catalog_file(path)
    with pytest.raises(CatalogError) as from_api:
        catalog_entries(bad)
    assert str(from_file.value) == f"bad.yaml: {from_api.value}"
    assert catalog_error_field(from_api.value) == ("price", "must not be negative")


@pytest.mark.parametrize(("message", "expected"), [
    ("catalog.plans[pro].meters.calls.unit_price: must be >= 0", ("meters.calls.unit_price", "must be >= 0")),
    ("catalog.meters[calls]: only sum meters read a value property", ("body", "only sum meters read a value property")),
    ("something without a path", ("body", "something without a path")),
])
def test_a_validation_error_names_the_field_of_its_entry(message: str, expected: tuple[str, str]) -> None:
    assert catalog_error_field(CatalogError(message)) == expected


def test_a_meter_billed_without_included_credits_keeps_money_credits() -> None:
    """Before: units, and the close of a plan billing 30 calls at 0.05 with no credits was refused
    (credit_unit_mismatch: the rating draws money against the gross amount)."""
    from shared.domain.catalog import credit_kinds

    assert credit_kinds(Catalog.from_dict(DOCUMENT)) == {"calls": False}
    blocked = {**DOCUMENT, "plans": [{**DOCUMENT["plans"][0], "meters": {"calls": {"unit_price": "0.002",
                                                                                  "overage": "block"}}}]}
    assert credit_kinds(Catalog.from_dict(blocked)) == {"calls": True}  # not billed: units, as before

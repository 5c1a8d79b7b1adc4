"""Metronome's JSON for products, rate cards and rates (pure): our stored records -> the shapes the SDK parses
(`ProductListResponse`, `RateCardRetrieveResponse.data`, `Rate`, `RateListResponse`)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from services.ingest.metronome.contract_terms import USD_CENTS, USD_CENTS_NAME, Product, RateRow

CREATED_BY = "api"
USD_CREDIT_TYPE = {"id": USD_CENTS, "name": USD_CENTS_NAME}


def number(value: Any) -> float | int:
    """A stored decimal string as the JSON number Metronome answers (an integer when it is whole)."""
    amount = Decimal(str(value))
    return int(amount) if amount == amount.to_integral_value() else float(amount)


def product_json(product: Product, tags: list[str], custom_fields: Mapping[str, str], created_at: datetime,
                 archived_at: datetime | None) -> dict[str, Any]:
    state = {"created_at": created_at.isoformat(), "created_by": CREATED_BY, "name": product.name,
             "billable_metric_id": product.billable_metric_id, "tags": tags, "starting_at": created_at.isoformat()}
    return {"id": product.product_id, "type": product.type, "current": state, "initial": state, "updates": [],
            "archived_at": archived_at.isoformat() if archived_at else None, "custom_fields": dict(custom_fields)}


def rate_card_json(rate_card_id: str, name: str, description: str | None, aliases: list[dict[str, Any]],
                   custom_fields: Mapping[str, str], created_at: datetime) -> dict[str, Any]:
    return {"id": rate_card_id, "name": name, "description": description, "created_at": created_at.isoformat(),
            "created_by": CREATED_BY, "aliases": aliases, "custom_fields": dict(custom_fields),
            "fiat_credit_type": USD_CREDIT_TYPE, "credit_type_conversions": []}


def rate_json(rate: Mapping[str, Any]) -> dict[str, Any]:
    """A stored rate document as Metronome's `Rate`."""
    shown: dict[str, Any] = {"rate_type": rate["rate_type"], "credit_type": USD_CREDIT_TYPE, "is_prorated": True}
    if rate.get("price") is not None:
        shown["price"] = number(rate["price"])
    if rate.get("tiers") is not None:
        shown["tiers"] = [{"price": number(t["price"]), **({"size": number(t["size"])} if "size" in t else {})}
                          for t in rate["tiers"]]
    return shown


def rate_list_item(row: RateRow, product: Product) -> dict[str, Any]:
    """One entry of `getRates` (`RateListResponse`)."""
    return {"entitled": row.entitled, "product_id": product.product_id, "product_name": product.name,
            "product_tags": [], "product_custom_fields": {}, "rate": rate_json(row.rate),
            "starting_at": row.starting_at.isoformat(),
            "ending_before": row.ending_before.isoformat() if row.ending_before else None,
            "billing_frequency": row.rate.get("billing_frequency")}

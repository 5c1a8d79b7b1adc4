"""Metronome's JSON for contracts (pure): a contract's stored terms -> v1 `Contract` (with `initial` and
`current`) and v2 `ContractV2`, as the SDK parses them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from services.ingest.metronome.contract_terms import USD_CENTS, Terms
from services.ingest.metronome.pricing_shapes import CREATED_BY, USD_CREDIT_TYPE, number


@dataclass(frozen=True)
class ContractFacts:
    """What the shapes need of a stored contract (the service layer's record, without its storage)."""

    contract_id: str
    customer_id: str
    rate_card_id: str
    name: str | None
    starting_at: datetime
    ending_before: datetime | None
    created_at: datetime
    archived_at: datetime | None
    terms: Terms
    initial_terms: Terms
    product_names: Mapping[str, str]
    period: tuple[datetime, datetime] | None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _product(product_id: str, names: Mapping[str, str]) -> dict[str, str]:
    return {"id": product_id, "name": names.get(product_id, product_id)}


def subscription_json(entry: Mapping[str, Any], facts: ContractFacts) -> dict[str, Any]:
    period = facts.period
    periods: dict[str, Any] = {}
    if period is not None:
        periods["current"] = {"starting_at": period[0].isoformat(), "ending_before": period[1].isoformat()}
    return {"id": entry["id"], "billing_periods": periods, "collection_schedule": "ADVANCE",
            "created_at": entry.get("starting_at", facts.created_at.isoformat()),
            "proration": {"invoice_behavior": "BILL_IMMEDIATELY", "is_prorated": True},
            "quantity_management_mode": "QUANTITY_ONLY",
            "quantity_schedule": [{"quantity": q["quantity"], "starting_at": q["starting_at"]}
                                  for q in entry.get("quantity_schedule") or ()],
            "starting_at": entry.get("starting_at", facts.starting_at.isoformat()),
            "ending_before": _iso(facts.ending_before),
            "subscription_rate": {"billing_frequency": entry["billing_frequency"],
                                  "product": _product(entry["product_id"], facts.product_names)},
            "name": entry.get("name"), "description": entry.get("description"),
            "fiat_credit_type_id": USD_CENTS}


def recurring_credit_json(entry: Mapping[str, Any], facts: ContractFacts) -> dict[str, Any]:
    return {"id": entry["id"], "access_amount": {"credit_type_id": USD_CENTS,
                                                 "unit_price": number(Decimal(entry["amount_cents"]))},
            "anchor_date": facts.starting_at.isoformat(), "commit_duration": {"value": 1, "unit": "PERIODS"},
            "priority": number(entry.get("priority", 1)), "product": _product(entry["product_id"], facts.product_names),
            "rate_type": "LIST_RATE", "starting_at": facts.starting_at.isoformat(),
            "applicable_product_ids": [entry["applicable_product_id"]], "name": entry.get("name"),
            "recurrence_frequency": "MONTHLY", "contract": {"id": facts.contract_id},
            **({"subscription_config": {"allocation": "INDIVIDUAL"}} if entry.get("per_seat") else {})}


def override_json(entry: Mapping[str, Any], facts: ContractFacts) -> dict[str, Any]:
    shown: dict[str, Any] = {"id": entry["id"], "created_at": entry.get("starting_at"),
                             "starting_at": entry.get("starting_at"), "type": entry["type"],
                             "product": _product(entry["product_id"], facts.product_names),
                             "override_specifiers": [{"product_id": entry["product_id"]}]}
    if entry["type"] == "MULTIPLIER":
        shown["multiplier"] = number(entry["multiplier"])
    else:
        shown["overwrite_rate"] = {"rate_type": entry.get("rate_type", "FLAT"), "price": number(entry["price"]),
                                   "credit_type": USD_CREDIT_TYPE}
    return shown


def _terms_json(terms: Terms, facts: ContractFacts) -> dict[str, Any]:
    return {"commits": [], "created_at": facts.created_at.isoformat(), "created_by": CREATED_BY,
            "overrides": [override_json(o, facts) for o in terms.overrides], "scheduled_charges": [],
            "starting_at": facts.starting_at.isoformat(), "ending_before": _iso(facts.ending_before),
            "transitions": [], "name": facts.name, "rate_card_id": facts.rate_card_id,
            "usage_statement_schedule": {"billing_anchor_date": facts.starting_at.isoformat(),
                                         "frequency": "MONTHLY"},
            "recurring_credits": [recurring_credit_json(c, facts) for c in terms.recurring_credits],
            "recurring_commits": [], "credits": [], "discounts": []}


def _subscriptions(terms: Terms, facts: ContractFacts) -> list[dict[str, Any]]:
    return [subscription_json(terms.subscription, facts)] if terms.subscription is not None else []


def contract_v1(facts: ContractFacts) -> dict[str, Any]:
    return {"id": facts.contract_id, "customer_id": facts.customer_id, "amendments": [],
            "initial": _terms_json(facts.initial_terms, facts), "current": _terms_json(facts.terms, facts),
            "archived_at": _iso(facts.archived_at), "subscriptions": _subscriptions(facts.terms, facts),
            "custom_fields": {}}


def contract_v2(facts: ContractFacts) -> dict[str, Any]:
    return {"id": facts.contract_id, "customer_id": facts.customer_id, "usage_filter": [],
            **_terms_json(facts.terms, facts), "subscriptions": _subscriptions(facts.terms, facts),
            "archived_at": _iso(facts.archived_at), "custom_fields": {}}

"""A Metronome contract's terms -> a plan of our catalog (pure).

# NOTE: what a contract is here. Metronome prices a contract from its rate card (the rates of its products at
# an instant), its `subscriptions` (a recurring fee x quantity), its `recurring_credits` and its `overrides`.
# Our worker bills plans. So a contract's terms are folded into ONE plan definition: the subscription
# product's rate is the per-seat fee (quantity = seats), every entitled usage product's rate prices its
# billable metric (a meter), an override rewrites the rate it names (multiplier or overwrite), and a monthly
# recurring credit on one usage product is that meter's included credit. The plan's id is a hash of its
# definition, so contracts with the same terms share a plan and the same terms never make two. An edit
# (upgrade, downgrade, an override) is a plan change to the plan of the new terms, prorated by the worker as
# our native plan changes are; a quantity update is a seat change.

Prices are in Metronome's units of the USD credit type: cents (a rate of 2000 is USD 20.00; a usage rate may
carry fractions of a cent). Anything we cannot bill exactly is refused with `Unsupported` (the field and
why), never approximated.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

USD_CENTS = "2714e483-4ff1-48e4-9e25-ac732e8f24f2"  # Metronome's id of the "USD (cents)" credit type
USD_CENTS_NAME = "USD (cents)"
SUPPORTED_RATE_TYPES = ("FLAT", "SUBSCRIPTION", "TIERED")
FEE_PRODUCT_TYPES = ("SUBSCRIPTION", "FIXED")
INTERVAL_OF_FREQUENCY = {"MONTHLY": "month", "ANNUAL": "year"}
PLAN_PREFIX = "mx-"


class Unsupported(Exception):
    """A Metronome field or value this engine does not bill: `field` names it, `feature` says what."""

    def __init__(self, field: str, feature: str) -> None:
        super().__init__(f"{field}: {feature}")
        self.field = field
        self.feature = feature


class Invalid(Exception):
    """A request Metronome itself would refuse (a product not on the rate card, a missing rate)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class Product:
    product_id: str
    name: str
    type: str
    billable_metric_id: str | None = None


@dataclass(frozen=True)
class RateRow:
    """One rate of a rate card: the product's price from `starting_at` (until `ending_before`)."""

    product_id: str
    starting_at: datetime
    entitled: bool
    rate: Mapping[str, Any]  # rate_type, price (cents), tiers [{price, size}], billing_frequency
    ending_before: datetime | None = None

    def covers(self, at: datetime) -> bool:
        return self.starting_at <= at and (self.ending_before is None or at < self.ending_before)


@dataclass(frozen=True)
class RateCard:
    rate_card_id: str
    name: str
    currency: str = "USD"


@dataclass(frozen=True)
class Terms:
    """A contract's billable terms, normalised (stored as JSON in `mx_contracts.terms`)."""

    subscription: Mapping[str, Any] | None  # {id, product_id, quantity, billing_frequency, starting_at}
    recurring_credits: Sequence[Mapping[str, Any]] = field(default_factory=tuple)  # {id, product_id, ...}
    overrides: Sequence[Mapping[str, Any]] = field(default_factory=tuple)  # {id, product_id, type, ...}

    def as_json(self) -> dict[str, Any]:
        return {"subscription": dict(self.subscription) if self.subscription is not None else None,
                "recurring_credits": [dict(c) for c in self.recurring_credits],
                "overrides": [dict(o) for o in self.overrides]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Terms:
        return cls(data.get("subscription"), tuple(data.get("recurring_credits") or ()),
                   tuple(data.get("overrides") or ()))

    @property
    def seats(self) -> int:
        return int(self.subscription["quantity"]) if self.subscription is not None else 1


# --- the request's terms ---------------------------------------------------------------------------------


def _refuse_present(entry: Mapping[str, Any], path: str, keys: Iterable[str]) -> None:
    for key in keys:
        if entry.get(key) not in (None, [], {}):
            raise Unsupported(f"{path}.{key}", f"{key} is not supported")


def _whole_quantity(value: Any, path: str) -> int:
    quantity = Decimal(str(value if value is not None else 1))
    if quantity != quantity.to_integral_value() or quantity < 1:
        raise Unsupported(path, "a subscription quantity is a whole number of seats, at least 1")
    return int(quantity)


def subscription_entry(raw: Mapping[str, Any], new_id: str, path: str) -> dict[str, Any]:
    """A `subscriptions[]` entry of a create (or an `add_subscriptions[]` entry of an edit), normalised."""
    _refuse_present(raw, path, ("billing_cycle_config", "seat_config", "ending_before"))
    if raw.get("collection_schedule") != "ADVANCE":
        raise Unsupported(f"{path}.collection_schedule", "only ADVANCE (the fee is billed at the period start)")
    proration = raw.get("proration") or {}
    if proration.get("is_prorated") is False or proration.get("invoice_behavior") == "BILL_ON_NEXT_COLLECTION_DATE":
        raise Unsupported(f"{path}.proration", "changes are prorated and billed immediately")
    if raw.get("quantity_management_mode") not in (None, "QUANTITY_ONLY"):
        raise Unsupported(f"{path}.quantity_management_mode", "only QUANTITY_ONLY (quantity = seats)")
    rate = raw.get("subscription_rate") or {}
    frequency = rate.get("billing_frequency")
    if frequency not in INTERVAL_OF_FREQUENCY:
        raise Unsupported(f"{path}.subscription_rate.billing_frequency", "only MONTHLY or ANNUAL")
    return {"id": new_id, "product_id": str(rate.get("product_id")), "billing_frequency": frequency,
            "quantity": _whole_quantity(raw.get("initial_quantity"), f"{path}.initial_quantity"),
            "name": raw.get("name"), "description": raw.get("description")}


def recurring_credit_entry(raw: Mapping[str, Any], new_id: str, path: str) -> dict[str, Any]:
    """A `recurring_credits[]` entry: a monthly credit on ONE usage product (our credits are per meter)."""
    _refuse_present(raw, path, ("applicable_product_tags", "specifiers", "hierarchy_configuration",
                                "rollover_fraction", "ending_before"))
    if raw.get("recurrence_frequency") not in (None, "MONTHLY"):
        raise Unsupported(f"{path}.recurrence_frequency", "credits recur each (monthly) period")
    duration = raw.get("commit_duration") or {}
    if Decimal(str(duration.get("value", 1))) != 1 or duration.get("unit", "PERIODS") != "PERIODS":
        raise Unsupported(f"{path}.commit_duration", "a recurring credit lasts one period")
    if raw.get("proration") not in (None, "NONE"):
        raise Unsupported(f"{path}.proration", "included credits are not prorated")
    amount = raw.get("access_amount") or {}
    if amount.get("credit_type_id") not in (None, USD_CENTS):
        raise Unsupported(f"{path}.access_amount.credit_type_id", "only the USD (cents) credit type")
    if amount.get("access_type") not in (None, "SPEND"):
        raise Unsupported(f"{path}.access_amount.access_type", "credits are spend (money) credits")
    applicable = list(raw.get("applicable_product_ids") or ())
    if len(applicable) != 1:
        raise Unsupported(f"{path}.applicable_product_ids", "a credit applies to exactly one usage product")
    allocation = (raw.get("subscription_config") or {}).get("allocation")
    cents = Decimal(str(amount.get("unit_price"))) * Decimal(str(amount.get("quantity", 1)))
    return {"id": new_id, "product_id": str(raw.get("product_id")), "applicable_product_id": str(applicable[0]),
            "amount_cents": str(cents), "priority": str(raw.get("priority", 1)), "name": raw.get("name"),
            "per_seat": allocation == "INDIVIDUAL"}


def override_entry(raw: Mapping[str, Any], new_id: str, path: str, contract_start: datetime,
                   starting_at: datetime) -> dict[str, Any]:
    """An `overrides[]` entry: a multiplier or an overwritten FLAT price of one product, from the start."""
    _refuse_present(raw, path, ("applicable_product_tags", "tiers", "is_commit_specific", "ending_before",
                                "entitled"))
    if starting_at > contract_start:
        raise Unsupported(f"{path}.starting_at", "an override applies from the contract's (or the edit's) start")
    product_id = raw.get("product_id")
    specifiers = list(raw.get("override_specifiers") or ())
    if product_id is None and len(specifiers) == 1 and set(specifiers[0]) <= {"product_id"}:
        product_id = specifiers[0].get("product_id")
    elif specifiers:
        raise Unsupported(f"{path}.override_specifiers", "only one product_id specifier")
    if product_id is None:
        raise Unsupported(f"{path}.product_id", "an override names one product")
    kind = raw.get("type") or ("MULTIPLIER" if raw.get("multiplier") is not None else "OVERWRITE")
    if kind == "MULTIPLIER":
        multiplier = Decimal(str(raw.get("multiplier")))
        if multiplier < 0:
            raise Invalid(f"{path}.multiplier", "must not be negative")
        return {"id": new_id, "product_id": str(product_id), "type": "MULTIPLIER", "multiplier": str(multiplier),
                "starting_at": starting_at.isoformat()}
    if kind == "OVERWRITE":
        rate = raw.get("overwrite_rate") or {}
        if rate.get("rate_type") not in ("FLAT", "SUBSCRIPTION"):
            raise Unsupported(f"{path}.overwrite_rate.rate_type", "only a FLAT or SUBSCRIPTION overwrite")
        return {"id": new_id, "product_id": str(product_id), "type": "OVERWRITE",
                "price": str(Decimal(str(rate.get("price")))), "rate_type": rate["rate_type"],
                "starting_at": starting_at.isoformat()}
    raise Unsupported(f"{path}.type", f"{kind} overrides are not supported")


# --- terms -> plan -------------------------------------------------------------------------------------------


def _major(cents: Decimal) -> str:
    """Cents as a decimal string of major units ("2000" -> "20.00", "0.05" -> "0.0005")."""
    value = (cents / 100).normalize()
    exponent = value.as_tuple().exponent
    return f"{value:.2f}" if isinstance(exponent, int) and exponent >= -2 else format(value, "f")


def _rate_at(rates: Iterable[RateRow], product_id: str, at: datetime) -> RateRow | None:
    """The product's rate in force at `at` (the latest started one)."""
    covering = [r for r in rates if r.product_id == product_id and r.covers(at)]
    return max(covering, key=lambda r: r.starting_at) if covering else None


def _apply_overrides(rate: Mapping[str, Any], overrides: Iterable[Mapping[str, Any]], product_id: str,
                     path: str) -> dict[str, Any]:
    result = dict(rate)
    for override in overrides:
        if override["product_id"] != product_id:
            continue
        if override["type"] == "OVERWRITE":
            result = {**result, "rate_type": "FLAT", "price": override["price"], "tiers": None}
        elif result.get("rate_type") == "TIERED":
            multiplier = Decimal(override["multiplier"])
            result["tiers"] = [{**t, "price": str(Decimal(str(t["price"])) * multiplier)}
                               for t in result.get("tiers") or ()]
        else:
            result["price"] = str(Decimal(str(result.get("price", 0))) * Decimal(override["multiplier"]))
    return result


def _usage_pricing(rate: Mapping[str, Any], path: str) -> dict[str, Any]:
    rate_type = rate.get("rate_type")
    if rate.get("pricing_group_values"):
        raise Unsupported(f"{path}.pricing_group_values", "prices per group value")
    if rate_type == "FLAT":
        return {"overage": "bill", "unit_price": _major(Decimal(str(rate.get("price", 0))))}
    if rate_type == "TIERED":
        tiers: list[dict[str, Any]] = []
        reached = Decimal(0)
        for index, tier in enumerate(rate.get("tiers") or ()):
            size = tier.get("size")
            if size is None:
                up_to = None
            else:
                reached += Decimal(str(size))
                up_to = format(reached.normalize(), "f")
            tiers.append({"up_to": up_to, "unit_price": _major(Decimal(str(tier["price"])))})
            if size is None and index != len(rate.get("tiers") or ()) - 1:
                raise Invalid(f"{path}.tiers[{index}].size", "only the last tier is open-ended")
        if not tiers or tiers[-1]["up_to"] is not None:
            tiers.append({"up_to": None, "unit_price": tiers[-1]["unit_price"] if tiers else "0"})
        return {"overage": "bill", "pricing": {"model": "graduated", "tiers": tiers}}
    raise Unsupported(f"{path}.rate_type", f"{rate_type} rates on usage products")


def plan_definition(card: RateCard, products: Mapping[str, Product], rates: Sequence[RateRow], terms: Terms,
                    at: datetime) -> dict[str, Any]:
    """The plan (a catalog document's entry, with its content-addressed `id`) that bills `terms` on `card`
    at `at`. Raises `Invalid` (a product or rate Metronome would not find) or `Unsupported`."""
    if card.currency != "USD":
        raise Unsupported("rate_card.fiat_credit_type_id", "only the USD (cents) credit type")
    # NOTE: change_timing immediate: a contract's quantity update applies at the instant it names (now), a
    # decrease too (prorated), as Metronome's does; a plan change names its timing itself.
    definition: dict[str, Any] = {"family": f"{PLAN_PREFIX}{card.rate_card_id}", "currency": card.currency,
                                  "interval": "month", "price": "0", "change_timing": "immediate"}
    name = card.name
    subscription = terms.subscription
    if subscription is not None:
        product = products.get(subscription["product_id"])
        if product is None or product.type not in FEE_PRODUCT_TYPES:
            raise Invalid("subscriptions.subscription_rate.product_id", "not a SUBSCRIPTION product")
        row = _rate_at(rates, product.product_id, at)
        if row is None or not row.entitled:
            raise Invalid("subscriptions.subscription_rate.product_id", "the rate card has no rate for it")
        rate = _apply_overrides(row.rate, terms.overrides, product.product_id, "overrides")
        if rate.get("rate_type") not in ("FLAT", "SUBSCRIPTION"):
            raise Unsupported("rate.rate_type", f"{rate.get('rate_type')} rates on subscription products")
        fee = Decimal(str(rate.get("price", 0)))
        if fee != fee.to_integral_value():
            raise Unsupported("overrides.multiplier", "a recurring fee must come to whole cents")
        definition["seat_price"] = _major(fee)
        definition["interval"] = INTERVAL_OF_FREQUENCY[subscription["billing_frequency"]]
        name = f"{card.name}: {product.name}"
    meters: dict[str, dict[str, Any]] = {}
    for product in sorted(products.values(), key=lambda p: p.product_id):
        if product.type != "USAGE" or product.billable_metric_id is None:
            continue
        row = _rate_at(rates, product.product_id, at)
        if row is None or not row.entitled:
            continue
        if row.rate.get("rate_type") not in SUPPORTED_RATE_TYPES:
            raise Unsupported("rate.rate_type", f"{row.rate.get('rate_type')} rates")
        rate = _apply_overrides(row.rate, terms.overrides, product.product_id, "overrides")
        if product.billable_metric_id in meters:
            raise Unsupported("rate.product_id", "two usage products on one billable metric")
        meters[product.billable_metric_id] = _usage_pricing(rate, f"rates[{product.product_id}]")
    for index, credit in enumerate(terms.recurring_credits):
        target = products.get(credit["applicable_product_id"])
        path = f"recurring_credits[{index}].applicable_product_ids"
        if target is None or target.type != "USAGE" or target.billable_metric_id not in meters:
            raise Invalid(path, "not a usage product priced on the rate card")
        pricing = meters[str(target.billable_metric_id)]
        if "included" in pricing:
            raise Unsupported(path, "one recurring credit per usage product")
        pricing["included"] = {"amount": _major(Decimal(credit["amount_cents"])),
                               "pooling": "per_seat" if credit.get("per_seat") else "org"}
    if meters:
        definition["meters"] = meters
    definition["name"] = name
    definition["id"] = plan_id_of(definition)
    return definition


def plan_id_of(definition: Mapping[str, Any]) -> str:
    """`mx-<20 hex>`: a hash of the definition without its id (equal terms, equal plan)."""
    body = {key: value for key, value in definition.items() if key != "id"}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return f"{PLAN_PREFIX}{digest[:20]}"

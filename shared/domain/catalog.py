"""The plan catalog as data: meters, plans and coupons parsed from a plain dict and validated at start.

The file format (YAML in ``shared/catalogs/``) is read by ``shared.adapters.catalog_file``; this module
only sees dicts, lists, strings, ints and bools. Every problem is reported as a ``CatalogError`` naming
the path of the offending field (``plans[pro].meters.inference.unit_price: ...``).

Decimal amounts must be written as strings or ints (``"9.00"``, ``20``): a YAML float such as ``9.99``
is refused, because it is already a binary approximation by the time we see it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from fractions import Fraction
from types import MappingProxyType
from typing import NewType, TypeVar

from shared.domain.calendar import Interval, ensure_utc
from shared.domain.coupons import Coupon, CouponDuration, CouponId, CouponScope, DiscountType
from shared.domain.errors import CatalogError, CurrencyMismatchError, DomainError, UnknownPlanError
from shared.domain.money import Money, UnitPrice, minor_units
from shared.domain.pricing import PricingModel, Tier, UsagePrice, check_tiers

PlanId = NewType("PlanId", str)
MeterId = NewType("MeterId", str)

#: What an included credit or a ledger grant is measured in: money, or units of the meter.
CreditAmount = Money | Decimal

_E = TypeVar("_E", bound=StrEnum)


class Aggregation(StrEnum):
    """How usage events become a meter quantity."""

    SUM = "sum"  # sum of a numeric property of the events
    COUNT = "count"  # number of events


class OveragePolicy(StrEnum):
    BILL = "bill"  # usage beyond included credits is billed in arrears at the meter's unit price
    BLOCK = "block"  # usage beyond included credits is refused at the edge and never billed


class Pooling(StrEnum):
    ORG = "org"  # one amount for the whole subscription
    PER_SEAT = "per_seat"  # amount x seats, pooled across the organisation


class ChangeTiming(StrEnum):
    PERIOD_END = "period_end"
    IMMEDIATE = "immediate"


class TrialEndBehaviour(StrEnum):
    """What happens when a trial ends and no payment method is on file."""

    PAST_DUE = "past_due"
    CANCEL = "cancel"


class UnusedFeePolicy(StrEnum):
    """What a cancel-now or a dunning give-up does with the unused part of the fee paid in advance (Stripe's
    `prorate` on cancel): nothing, a credit note to the customer balance, or a credit note refunded."""

    NONE = "none"
    CREDIT = "credit"
    REFUND = "refund"


class QuotaWindow(StrEnum):
    CALENDAR_MONTH = "calendar_month"  # resets on the 1st at 00:00 in the customer's zone
    TRIAL = "trial"  # one allowance over the trial window, then nothing until a plan is set


@dataclass(frozen=True, slots=True)
class Meter:
    """A billable metric: which usage events feed it and in what unit it counts.

    ``value_property`` names the numeric property summed for SUM meters (None for COUNT meters).
    """

    id: MeterId
    name: str
    unit: str
    event_type: str
    aggregation: Aggregation
    value_property: str | None = None
    # An event property whose value keys the price (e.g. ``model``): the usage of each value is aggregated
    # as the meter "<meter id>/<value>" and priced by the plan's ``dimensions`` (``dimension_meter_id``).
    dimension: str | None = None


#: Separates a meter id from the value of its dimension in the meter id its usage is aggregated under.
DIMENSION_SEPARATOR = "/"


def dimension_meter_id(meter_id: str, value: str) -> str:
    """The meter id the usage of one dimension value is aggregated and billed under: "inference/gpt-4o"."""
    return f"{meter_id}{DIMENSION_SEPARATOR}{value}"


@dataclass(frozen=True, slots=True)
class IncludedCredit:
    """Credits granted each period for one meter: money (``amount``) or meter units (``units``)."""

    pooling: Pooling
    amount: Money | None = None
    units: Decimal | None = None

    def __post_init__(self) -> None:
        if (self.amount is None) == (self.units is None):
            raise CatalogError("an included credit needs exactly one of amount or units")

    def for_seats(self, seats: int) -> CreditAmount:
        """The credit for a subscription with ``seats`` seats (per-seat credits are pooled)."""
        multiplier = seats if self.pooling is Pooling.PER_SEAT else 1
        if self.amount is not None:
            return self.amount * multiplier
        if self.units is not None:
            return self.units * multiplier
        raise CatalogError("an included credit needs exactly one of amount or units")


@dataclass(frozen=True, slots=True)
class MeterPricing:
    """How a plan prices one meter: included credit, then bill or block beyond it."""

    meter_id: MeterId
    overage: OveragePolicy
    unit_price: UnitPrice | None = None
    included: IncludedCredit | None = None
    meter_name: str | None = None  # the catalog meter's name and unit, for invoice lines people can read
    meter_unit: str | None = None
    # A pricing model (package, graduated, volume, or per unit with a minimum); None: ``unit_price`` per unit.
    price: UsagePrice | None = None
    # Prices per value of the meter's dimension; values not listed are priced as above (the default).
    dimension_prices: Mapping[str, UsagePrice] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class Quota:
    """A hard allowance of a counted meter (reports) per window; the edge enforces it atomically."""

    meter_id: MeterId
    limit: int
    window: QuotaWindow
    window_days: int | None = None
    per_user_limit: int | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """A sellable plan. The recurring fee per interval is ``price + seat_price x seats``."""

    id: PlanId
    name: str
    family: str
    interval: Interval
    price: Money
    seat_price: Money | None = None
    trial_days: int = 0
    features: frozenset[str] = field(default_factory=frozenset)
    entitlements: Mapping[str, int | bool | str] = field(default_factory=lambda: MappingProxyType({}))
    meters: Mapping[MeterId, MeterPricing] = field(default_factory=lambda: MappingProxyType({}))
    change_timing: ChangeTiming = ChangeTiming.PERIOD_END
    trial_end_without_payment_method: TrialEndBehaviour = TrialEndBehaviour.PAST_DUE
    quota: Quota | None = None
    example_prices: bool = False
    unused_fee_policy: UnusedFeePolicy = UnusedFeePolicy.NONE

    @property
    def currency(self) -> str:
        return self.price.currency

    @property
    def per_seat(self) -> bool:
        return self.seat_price is not None

    def fee(self, seats: int) -> Money:
        """The recurring fee for one full period with ``seats`` seats."""
        if self.seat_price is None:
            return self.price
        return self.price + self.seat_price * seats

    def monthly_equivalent(self, seats: int) -> Fraction:
        """The fee per month in minor units, exact, to compare plans of different intervals."""
        return Fraction(self.fee(seats).amount_minor, self.interval.months)

    def pricing_for(self, meter_id: str) -> MeterPricing | None:
        """How the plan prices ``meter_id``: a catalog meter, or one value of a dimensional meter
        ("inference/gpt-4o": its ``dimensions`` price, else the meter's own price), named after the value."""
        pricing = self.meters.get(MeterId(meter_id))
        if pricing is not None or DIMENSION_SEPARATOR not in meter_id:
            return pricing
        parent_id, value = meter_id.split(DIMENSION_SEPARATOR, 1)
        parent = self.meters.get(MeterId(parent_id))
        if parent is None:
            return None
        # NOTE: always a pricing model (the default per unit price as one): a value's usage draws no credits
        # (the ledger holds them per catalog meter; a meter with a dimension includes none).
        price = parent.dimension_prices.get(value, parent.price)
        if price is None and parent.unit_price is not None:
            price = UsagePrice(PricingModel.PER_UNIT, parent.unit_price.currency, unit_price=parent.unit_price.amount)
        unit_price = (UnitPrice(price.unit_price, price.currency)
                      if price is not None and price.model is PricingModel.PER_UNIT and price.unit_price is not None
                      else None)
        return replace(parent, meter_id=MeterId(meter_id), price=price, unit_price=unit_price,
                       meter_name=f"{parent.meter_name or parent_id} ({value})", dimension_prices=MappingProxyType({}))

    def require_sold_in(self, currency: str) -> None:
        """Refuse a subscription billed in ``currency`` unless this plan is sold in it.

        # NOTE: a subscription bills in its customer's currency, and every amount of its invoices mixes the
        # plan's prices with that currency: the edge checks this before accepting a subscribe, the worker
        # again when it applies one (the command may come from elsewhere).
        Raises ``CurrencyMismatchError`` (code ``currency_mismatch``): ``left`` the plan's, ``right`` ``currency``.
        """
        if self.currency != currency:
            raise CurrencyMismatchError(self.currency, currency)

    def is_upgrade_from(self, current: Plan, seats: int) -> bool:
        """True when moving from ``current`` to this plan costs more per month (ties count as upgrades).

        # NOTE: upgrades apply at once, so a same-price switch (e.g. to a plan with other features) is
        # treated like one: the customer gets what they asked for now and the proration nets to zero.
        """
        if current.currency != self.currency:
            raise CatalogError(f"cannot compare plans in {current.currency} and {self.currency}",
                               code="currency_mismatch")
        return self.monthly_equivalent(seats) >= current.monthly_equivalent(seats)


@dataclass(frozen=True, slots=True)
class Catalog:
    """Every meter, plan and coupon known to the engine, validated and cross-referenced."""

    meters: Mapping[MeterId, Meter]
    plans: Mapping[PlanId, Plan]
    coupons: Mapping[CouponId, Coupon]

    def plan(self, plan_id: str) -> Plan:
        try:
            return self.plans[PlanId(plan_id)]
        except KeyError:
            raise UnknownPlanError(f"unknown plan {plan_id!r}") from None

    def meter(self, meter_id: str) -> Meter:
        try:
            return self.meters[MeterId(meter_id)]
        except KeyError:
            raise CatalogError(f"unknown meter {meter_id!r}", code="unknown_meter") from None

    def coupon(self, coupon_id: str) -> Coupon:
        try:
            return self.coupons[CouponId(coupon_id)]
        except KeyError:
            raise CatalogError(f"unknown coupon {coupon_id!r}", code="unknown_coupon") from None

    def meters_for_event_type(self, event_type: str) -> list[Meter]:
        return [meter for meter in self.meters.values() if meter.event_type == event_type]

    def plan_in(self, plan_id: str, currency: str) -> Plan:
        """The plan sold as ``plan_id`` priced in ``currency``: the plan itself when it is priced in it, else
        its price list in that currency (``prices`` in the catalog: the plan "<plan_id>~<currency>"), else
        the plan itself (``require_sold_in`` then refuses it)."""
        plan = self.plan(plan_id)
        if plan.currency == currency:
            return plan
        return self.plans.get(PlanId(f"{plan_id}{CURRENCY_SEPARATOR}{currency}"), plan)

    def plans_in_family(self, family: str) -> list[Plan]:
        return [plan for plan in self.plans.values() if plan.family == family]

    @classmethod
    def from_dict(cls, data: object) -> Catalog:
        """Parse and validate one catalog document (see the files in ``shared/catalogs/``)."""
        return _parse_catalog(data, "catalog")

    @classmethod
    def merge(cls, catalogs: Iterable[Catalog]) -> Catalog:
        """One catalog from several documents; an id defined twice is an error, not an override."""
        meters: dict[MeterId, Meter] = {}
        plans: dict[PlanId, Plan] = {}
        coupons: dict[CouponId, Coupon] = {}
        for catalog in catalogs:
            _merge_unique(meters, catalog.meters, "meter")
            _merge_unique(plans, catalog.plans, "plan")
            _merge_unique(coupons, catalog.coupons, "coupon")
        for plan in plans.values():
            _check_plan_meters(plan, meters, f"plans[{plan.id}]")
        return cls(MappingProxyType(meters), MappingProxyType(plans), MappingProxyType(coupons))


_K = TypeVar("_K", bound=str)
_V = TypeVar("_V")


def _merge_unique(target: dict[_K, _V], source: Mapping[_K, _V], kind: str) -> None:
    for key, value in source.items():
        if key in target:
            raise CatalogError(f"{kind} {key!r} is defined in more than one catalog document")
        target[key] = value


# --- parsing helpers -------------------------------------------------------------------------------


def _fail(path: str, message: str) -> CatalogError:
    return CatalogError(f"{path}: {message}")


def _mapping(value: object, path: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise _fail(path, f"expected a mapping, got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise _fail(path, f"keys must be strings, got {key!r}")
    return value


def _only_keys(data: Mapping[str, object], allowed: set[str], path: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise _fail(path, f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def _required(data: Mapping[str, object], key: str, path: str) -> object:
    if key not in data or data[key] is None:
        raise _fail(f"{path}.{key}", "is required")
    return data[key]


def _str(value: object, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, f"expected a non-empty string, got {value!r}")
    return value


def _identifier(value: object, path: str) -> str:
    text = _str(value, path)
    if not all(ch.isalnum() or ch in "_-." for ch in text):
        raise _fail(path, f"{text!r} is not a valid id (letters, digits, _ - . only)")
    return text


def _int(value: object, path: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, f"expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise _fail(path, f"must be >= {minimum}, got {value}")
    return value


def _bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, f"expected true or false, got {value!r}")
    return value


def _decimal(value: object, path: str) -> Decimal:
    if isinstance(value, float):
        raise _fail(path, f'write decimal amounts as quoted strings ("{value}"), floats are inexact')
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _fail(path, f"expected a decimal string or an integer, got {value!r}")
    try:
        result = Decimal(str(value).strip())
    except InvalidOperation:
        raise _fail(path, f"{value!r} is not a decimal number") from None
    if not result.is_finite():
        raise _fail(path, f"must be finite, got {value!r}")
    return result


def _money(value: object, currency: str, path: str) -> Money:
    amount = _decimal(value, path)
    if amount != amount.quantize(Decimal(1).scaleb(-minor_units(currency))):
        raise _fail(path, f"{amount} has more decimals than {currency} allows ({minor_units(currency)})")
    return Money.of(amount, currency)


def _enum(enum_type: type[_E], value: object, path: str) -> _E:
    allowed = ", ".join(member.value for member in enum_type)
    if not isinstance(value, str):
        raise _fail(path, f"expected one of {allowed}, got {value!r}")
    try:
        return enum_type(value)
    except ValueError:
        raise _fail(path, f"expected one of {allowed}, got {value!r}") from None


def _list(value: object, path: str) -> list[object]:
    if not isinstance(value, list):
        raise _fail(path, f"expected a list, got {type(value).__name__}")
    return value


def _instant(value: object, path: str) -> datetime:
    if isinstance(value, datetime):
        instant = value
    elif isinstance(value, date):
        # NOTE: a bare date is read as 00:00 UTC of that day: the coupon can no longer be redeemed
        # from that date on. Write a full instant for anything else.
        instant = datetime(value.year, value.month, value.day, tzinfo=UTC)
    elif isinstance(value, str):
        try:
            instant = datetime.fromisoformat(value)
        except ValueError:
            raise _fail(path, f"{value!r} is not an ISO 8601 instant") from None
    else:
        raise _fail(path, f"expected an ISO 8601 instant, got {value!r}")
    try:
        return ensure_utc(instant, path)
    except DomainError as error:
        raise _fail(path, "instants must carry a UTC offset (e.g. 2030-01-01T00:00:00Z)") from error


# --- documents -------------------------------------------------------------------------------------


_CATALOG_KEYS = {"version", "description", "currency", "meters", "plans", "coupons"}
_METER_KEYS = {"id", "name", "unit", "event_type", "aggregation", "value_property", "description", "dimension"}
_PLAN_KEYS = {
    "id",
    "name",
    "family",
    "interval",
    "currency",
    "price",
    "seat_price",
    "trial_days",
    "features",
    "entitlements",
    "meters",
    "change_timing",
    "trial_end_without_payment_method",
    "quota",
    "example_prices",
    "description",
    "unused_fee_policy",
    "prices",
}
#: What a plan's ``prices: {<currency>: {...}}`` entry restates in that currency (``price`` required; ``meters``
#: and ``seat_price`` when the plan has them: amounts are never converted).
_CURRENCY_PRICE_KEYS = {"price", "seat_price", "meters"}
_PRICING_KEYS = {"unit_price", "overage", "included", "pricing", "dimensions"}
_MODEL_KEYS = {"model", "unit_price", "package_size", "package_price", "tiers", "minimum"}
_TIER_KEYS = {"up_to", "unit_price", "flat_fee"}
_INCLUDED_KEYS = {"amount", "units", "pooling"}
_QUOTA_KEYS = {"meter", "limit", "window", "window_days", "per_user_limit"}
_COUPON_KEYS = {
    "id",
    "name",
    "percent_off",
    "amount_off",
    "currency",
    "duration",
    "duration_periods",
    "max_redemptions",
    "redeem_by",
    "applies_to",
    "plans",
    "description",
}


def _parse_catalog(data: object, path: str) -> Catalog:
    document = _mapping(data, path)
    _only_keys(document, _CATALOG_KEYS, path)
    version = _int(_required(document, "version", path), f"{path}.version")
    if version != 1:
        raise _fail(f"{path}.version", f"unsupported catalog version {version} (this engine reads 1)")
    default_currency = document.get("currency")
    if default_currency is not None:
        _currency(default_currency, f"{path}.currency")

    meters: dict[MeterId, Meter] = {}
    for index, raw in enumerate(_list(document.get("meters", []), f"{path}.meters")):
        meter = _parse_meter(raw, f"{path}.meters[{index}]")
        if meter.id in meters:
            raise _fail(f"{path}.meters[{index}].id", f"duplicate meter id {meter.id!r}")
        meters[meter.id] = meter

    plans: dict[PlanId, Plan] = {}
    for index, raw in enumerate(_list(document.get("plans", []), f"{path}.plans")):
        plan = _parse_plan(raw, f"{path}.plans[{index}]", default_currency, meters)
        if plan.id in plans:
            raise _fail(f"{path}.plans[{index}].id", f"duplicate plan id {plan.id!r}")
        plans[plan.id] = plan
        for variant in _currency_variants(raw, f"{path}.plans[{plan.id}]", default_currency, meters, plan):
            plans[variant.id] = variant

    coupons: dict[CouponId, Coupon] = {}
    for index, raw in enumerate(_list(document.get("coupons", []), f"{path}.coupons")):
        coupon = _parse_coupon(raw, f"{path}.coupons[{index}]", default_currency)
        if coupon.id in coupons:
            raise _fail(f"{path}.coupons[{index}].id", f"duplicate coupon id {coupon.id!r}")
        coupons[coupon.id] = coupon

    catalog = Catalog(MappingProxyType(meters), MappingProxyType(plans), MappingProxyType(coupons))
    # NOTE: each document is self-contained: it defines every meter its plans use, so a document can
    # be validated alone and documents can be merged in any order.
    for plan in plans.values():
        _check_plan_meters(plan, meters, f"{path}.plans[{plan.id}]")
    for coupon in coupons.values():
        for plan_id in sorted(coupon.plan_ids):
            if PlanId(plan_id) not in plans:
                raise _fail(f"{path}.coupons[{coupon.id}].plans", f"unknown plan {plan_id!r}")
    return catalog


def _currency(value: object, path: str) -> str:
    code = _str(value, path)
    try:
        minor_units(code)
    except DomainError:
        raise _fail(path, f"unknown ISO 4217 currency {code!r}") from None
    return code


def _parse_meter(raw: object, path: str) -> Meter:
    data = _mapping(raw, path)
    _only_keys(data, _METER_KEYS, path)
    meter_id = MeterId(_identifier(_required(data, "id", path), f"{path}.id"))
    path = f"{path.rsplit('[', 1)[0]}[{meter_id}]"
    aggregation = _enum(Aggregation, _required(data, "aggregation", path), f"{path}.aggregation")
    value_property = data.get("value_property")
    if aggregation is Aggregation.SUM:
        value_property = _str(_required(data, "value_property", path), f"{path}.value_property")
    elif value_property is not None:
        raise _fail(f"{path}.value_property", "only sum meters read a value property")
    return Meter(
        id=meter_id,
        name=_str(data.get("name", meter_id), f"{path}.name"),
        unit=_identifier(_required(data, "unit", path), f"{path}.unit"),
        event_type=_identifier(_required(data, "event_type", path), f"{path}.event_type"),
        aggregation=aggregation,
        value_property=value_property,
        dimension=None if data.get("dimension") is None else _identifier(data["dimension"], f"{path}.dimension"),
    )


#: Separates a plan id from the currency of one of its other price lists: "pro~EUR" is "pro" priced in EUR.
CURRENCY_SEPARATOR = "~"


def _currency_variants(raw: object, path: str, default_currency: object, known_meters: Mapping[MeterId, Meter],
                       base: Plan) -> list[Plan]:
    """The plan's price lists in other currencies (``prices: {EUR: {price, seat_price?, meters?}}``), each one
    sellable plan "<id>~<currency>" with the plan's terms and that currency's amounts; the customer's currency
    picks one (``Catalog.plan_in``).

    # NOTE: each currency restates its amounts (fee, seat price, meter prices): nothing is converted at an
    # exchange rate, so an invoice is exactly what the price list says.
    """
    data = _mapping(raw, path)
    if data.get("prices") is None:
        return []
    variants = []
    for code, entry in _mapping(data["prices"], f"{path}.prices").items():
        currency = _currency(code, f"{path}.prices.{code}")
        where = f"{path}.prices.{currency}"
        if currency == base.currency:
            raise _fail(where, f"is the plan's own currency ({base.currency})")
        prices = _mapping(entry, where)
        _only_keys(prices, _CURRENCY_PRICE_KEYS, where)
        _required(prices, "price", where)
        if base.meters and "meters" not in prices:
            raise _fail(f"{where}.meters", "is required: restate the plan's meter prices in this currency")
        if base.seat_price is not None and "seat_price" not in prices:
            raise _fail(f"{where}.seat_price", "is required: the plan has a seat price")
        terms = {k: v for k, v in data.items() if k not in _CURRENCY_PRICE_KEYS and k != "prices"}
        plan = _parse_plan({**terms, **prices, "currency": currency}, where, default_currency, known_meters)
        variants.append(replace(plan, id=PlanId(f"{base.id}{CURRENCY_SEPARATOR}{currency}")))
    return variants


def _parse_plan(raw: object, path: str, default_currency: object, known_meters: Mapping[MeterId, Meter]) -> Plan:
    data = _mapping(raw, path)
    _only_keys(data, _PLAN_KEYS, path)
    plan_id = PlanId(_identifier(_required(data, "id", path), f"{path}.id"))
    path = f"{path.rsplit('[', 1)[0]}[{plan_id}]"
    currency_value = data.get("currency", default_currency)
    if currency_value is None:
        raise _fail(f"{path}.currency", "is required (or set a catalog-wide currency)")
    currency = _currency(currency_value, f"{path}.currency")

    seat_price = None
    if data.get("seat_price") is not None:
        seat_price = _money(data["seat_price"], currency, f"{path}.seat_price")
        if seat_price.is_negative():
            raise _fail(f"{path}.seat_price", "must not be negative")
    price = _money(data.get("price", 0), currency, f"{path}.price")
    if price.is_negative():
        raise _fail(f"{path}.price", "must not be negative")

    features: set[str] = set()
    for index, feature in enumerate(_list(data.get("features", []), f"{path}.features")):
        features.add(_identifier(feature, f"{path}.features[{index}]"))

    entitlements: dict[str, int | bool | str] = {}
    for key, value in _mapping(data.get("entitlements", {}), f"{path}.entitlements").items():
        if isinstance(value, float) or not isinstance(value, int | bool | str):
            raise _fail(f"{path}.entitlements.{key}", f"expected an int, bool or string, got {value!r}")
        entitlements[_identifier(key, f"{path}.entitlements")] = value

    meters: dict[MeterId, MeterPricing] = {}
    for meter_key, pricing in _mapping(data.get("meters", {}), f"{path}.meters").items():
        meter_id = MeterId(_identifier(meter_key, f"{path}.meters"))
        meters[meter_id] = _parse_pricing(meter_id, pricing, currency, f"{path}.meters.{meter_id}",
                                          known_meters.get(meter_id))

    quota = None
    if data.get("quota") is not None:
        quota = _parse_quota(data["quota"], f"{path}.quota")

    return Plan(
        id=plan_id,
        name=_str(_required(data, "name", path), f"{path}.name"),
        family=_identifier(_required(data, "family", path), f"{path}.family"),
        interval=_enum(Interval, _required(data, "interval", path), f"{path}.interval"),
        price=price,
        seat_price=seat_price,
        trial_days=_int(data.get("trial_days", 0), f"{path}.trial_days", minimum=0),
        features=frozenset(features),
        entitlements=MappingProxyType(entitlements),
        meters=MappingProxyType(meters),
        change_timing=_enum(
            ChangeTiming, data.get("change_timing", ChangeTiming.PERIOD_END.value), f"{path}.change_timing"
        ),
        trial_end_without_payment_method=_enum(
            TrialEndBehaviour,
            data.get("trial_end_without_payment_method", TrialEndBehaviour.PAST_DUE.value),
            f"{path}.trial_end_without_payment_method",
        ),
        quota=quota,
        example_prices=_bool(data.get("example_prices", False), f"{path}.example_prices"),
        unused_fee_policy=_enum(UnusedFeePolicy, data.get("unused_fee_policy", UnusedFeePolicy.NONE.value),
                                f"{path}.unused_fee_policy"),
    )


def _parse_pricing(meter_id: MeterId, raw: object, currency: str, path: str, meter: Meter | None) -> MeterPricing:
    data = _mapping(raw, path)
    _only_keys(data, _PRICING_KEYS, path)
    overage = _enum(OveragePolicy, _required(data, "overage", path), f"{path}.overage")
    unit_price = None
    if data.get("unit_price") is not None:
        amount = _decimal(data["unit_price"], f"{path}.unit_price")
        if amount < 0:
            raise _fail(f"{path}.unit_price", "must not be negative")
        unit_price = UnitPrice(amount, currency)
    price = None
    if data.get("pricing") is not None:
        if unit_price is not None:
            raise _fail(f"{path}.unit_price", "give either unit_price or pricing, not both")
        price = _parse_usage_price(data["pricing"], currency, f"{path}.pricing")
        if price.model is PricingModel.PER_UNIT and price.unit_price is not None:
            unit_price = UnitPrice(price.unit_price, currency)
    if overage is OveragePolicy.BILL and unit_price is None and price is None:
        raise _fail(f"{path}.unit_price", "is required when overage is bill (or give pricing)")
    included = None
    if data.get("included") is not None:
        included = _parse_included(data["included"], currency, f"{path}.included")
        if included.amount is not None and unit_price is None and price is None:
            raise _fail(f"{path}.unit_price", "is required to consume money credits (usage needs a price)")
    dimension_prices: dict[str, UsagePrice] = {}
    if meter is not None and meter.dimension is not None and price is None and unit_price is not None:
        # a meter with a dimension is priced by a model (its default per unit price as one): it draws no credits
        price = UsagePrice(PricingModel.PER_UNIT, currency, unit_price=unit_price.amount)
    if meter is not None and meter.dimension is not None and included is not None:
        # NOTE: its usage is billed per value ("<meter>/<value>"), and credits are held per catalog meter.
        raise _fail(f"{path}.included", "included credits are not drawn from a meter with a dimension")
    if data.get("dimensions") is not None:
        if meter is None or meter.dimension is None:
            raise _fail(f"{path}.dimensions", "the meter has no dimension (set the meter's dimension property)")
        for value, raw_price in _mapping(data["dimensions"], f"{path}.dimensions").items():
            if not value.strip():
                raise _fail(f"{path}.dimensions", f"{value!r} is not a dimension value")
            dimension_prices[value] = _parse_usage_price(raw_price, currency, f"{path}.dimensions.{value}")
    return MeterPricing(meter_id=meter_id, overage=overage, unit_price=unit_price, included=included,
                        meter_name=meter.name if meter else None, meter_unit=meter.unit if meter else None,
                        price=price, dimension_prices=MappingProxyType(dimension_prices))


def _parse_usage_price(raw: object, currency: str, path: str) -> UsagePrice:
    """A ``pricing`` block: ``model`` per_unit (``unit_price``), package (``package_size``, ``package_price``),
    graduated or volume (``tiers``: ``up_to`` inclusive, null on the last, ``unit_price``, ``flat_fee``), each
    with an optional ``minimum`` per period."""
    data = _mapping(raw, path)
    _only_keys(data, _MODEL_KEYS, path)
    model = _enum(PricingModel, _required(data, "model", path), f"{path}.model")
    wanted = {PricingModel.PER_UNIT: {"unit_price"}, PricingModel.PACKAGE: {"package_size", "package_price"},
              PricingModel.GRADUATED: {"tiers"}, PricingModel.VOLUME: {"tiers"}}[model]
    for key in sorted(_MODEL_KEYS - wanted - {"model", "minimum"}):
        if data.get(key) is not None:
            raise _fail(f"{path}.{key}", f"does not apply to a {model.value} price")
    for key in sorted(wanted):
        _required(data, key, path)
    minimum = None
    if data.get("minimum") is not None:
        minimum = _money(data["minimum"], currency, f"{path}.minimum")
        if minimum.is_negative():
            raise _fail(f"{path}.minimum", "must not be negative")
    unit_price = package_size = package_price = None
    tiers: list[Tier] = []
    if model is PricingModel.PER_UNIT:
        unit_price = _non_negative(data["unit_price"], f"{path}.unit_price")
    elif model is PricingModel.PACKAGE:
        package_size = Decimal(_int(data["package_size"], f"{path}.package_size", minimum=1))
        package_price = _non_negative(data["package_price"], f"{path}.package_price")
    else:
        for index, raw_tier in enumerate(_list(data["tiers"], f"{path}.tiers")):
            tier_path = f"{path}.tiers[{index}]"
            tier = _mapping(raw_tier, tier_path)
            _only_keys(tier, _TIER_KEYS, tier_path)
            if "up_to" not in tier:
                raise _fail(f"{tier_path}.up_to", "is required (null on the last tier)")
            up_to = None if tier["up_to"] is None else _decimal(tier["up_to"], f"{tier_path}.up_to")
            tiers.append(Tier(up_to=up_to,
                              unit_price=_non_negative(tier.get("unit_price", 0), f"{tier_path}.unit_price"),
                              flat_fee=_non_negative(tier.get("flat_fee", 0), f"{tier_path}.flat_fee")))
            if tier.get("flat_fee") is not None:
                _money(tier["flat_fee"], currency, f"{tier_path}.flat_fee")
        try:
            check_tiers(tiers)
        except CatalogError as error:
            raise _fail(path, str(error)) from error
    return UsagePrice(model=model, currency=currency, unit_price=unit_price, package_size=package_size,
                      package_price=package_price, tiers=tuple(tiers), minimum=minimum)


def _non_negative(value: object, path: str) -> Decimal:
    amount = _decimal(value, path)
    if amount < 0:
        raise _fail(path, "must not be negative")
    return amount


def _parse_included(raw: object, currency: str, path: str) -> IncludedCredit:
    data = _mapping(raw, path)
    _only_keys(data, _INCLUDED_KEYS, path)
    pooling = _enum(Pooling, data.get("pooling", Pooling.ORG.value), f"{path}.pooling")
    has_amount = data.get("amount") is not None
    has_units = data.get("units") is not None
    if has_amount == has_units:
        raise _fail(path, "give exactly one of amount (money) or units")
    if has_amount:
        amount = _money(data["amount"], currency, f"{path}.amount")
        if amount.is_negative():
            raise _fail(f"{path}.amount", "must not be negative")
        return IncludedCredit(pooling=pooling, amount=amount)
    units = _decimal(data["units"], f"{path}.units")
    if units < 0:
        raise _fail(f"{path}.units", "must not be negative")
    return IncludedCredit(pooling=pooling, units=units)


def _parse_quota(raw: object, path: str) -> Quota:
    data = _mapping(raw, path)
    _only_keys(data, _QUOTA_KEYS, path)
    window = _enum(QuotaWindow, _required(data, "window", path), f"{path}.window")
    window_days = None
    if window is QuotaWindow.TRIAL:
        window_days = _int(_required(data, "window_days", path), f"{path}.window_days", minimum=1)
    elif data.get("window_days") is not None:
        raise _fail(f"{path}.window_days", "only a trial window has a length in days")
    per_user_limit = None
    if data.get("per_user_limit") is not None:
        per_user_limit = _int(data["per_user_limit"], f"{path}.per_user_limit", minimum=1)
    return Quota(
        meter_id=MeterId(_identifier(_required(data, "meter", path), f"{path}.meter")),
        limit=_int(_required(data, "limit", path), f"{path}.limit", minimum=0),
        window=window,
        window_days=window_days,
        per_user_limit=per_user_limit,
    )


def _parse_coupon(raw: object, path: str, default_currency: object) -> Coupon:
    data = _mapping(raw, path)
    _only_keys(data, _COUPON_KEYS, path)
    coupon_id = CouponId(_identifier(_required(data, "id", path), f"{path}.id"))
    path = f"{path.rsplit('[', 1)[0]}[{coupon_id}]"
    has_percent = data.get("percent_off") is not None
    has_amount = data.get("amount_off") is not None
    if has_percent == has_amount:
        raise _fail(path, "give exactly one of percent_off or amount_off")
    percent_off = None
    amount_off = None
    if has_percent:
        percent_off = _decimal(data["percent_off"], f"{path}.percent_off")
        discount_type = DiscountType.PERCENT
    else:
        currency_value = data.get("currency", default_currency)
        if currency_value is None:
            raise _fail(f"{path}.currency", "is required for an amount_off coupon")
        currency = _currency(currency_value, f"{path}.currency")
        amount_off = _money(data["amount_off"], currency, f"{path}.amount_off")
        discount_type = DiscountType.FIXED_AMOUNT
    duration_periods = None
    if data.get("duration_periods") is not None:
        duration_periods = _int(data["duration_periods"], f"{path}.duration_periods", minimum=1)
    max_redemptions = None
    if data.get("max_redemptions") is not None:
        max_redemptions = _int(data["max_redemptions"], f"{path}.max_redemptions", minimum=1)
    redeem_by = None
    if data.get("redeem_by") is not None:
        redeem_by = _instant(data["redeem_by"], f"{path}.redeem_by")
    plan_ids = frozenset(
        _identifier(plan, f"{path}.plans[{index}]")
        for index, plan in enumerate(_list(data.get("plans", []), f"{path}.plans"))
    )
    try:
        return Coupon(
            id=coupon_id,
            name=_str(data.get("name", coupon_id), f"{path}.name"),
            discount_type=discount_type,
            duration=_enum(CouponDuration, _required(data, "duration", path), f"{path}.duration"),
            percent_off=percent_off,
            amount_off=amount_off,
            duration_periods=duration_periods,
            max_redemptions=max_redemptions,
            redeem_by=redeem_by,
            applies_to=_enum(CouponScope, data.get("applies_to", CouponScope.FEE.value), f"{path}.applies_to"),
            plan_ids=plan_ids,
        )
    except DomainError as error:
        raise _fail(path, str(error)) from error


def _check_plan_meters(plan: Plan, meters: Mapping[MeterId, Meter], path: str) -> None:
    for meter_id in plan.meters:
        if meter_id not in meters:
            raise _fail(f"{path}.meters.{meter_id}", f"unknown meter {meter_id!r} (define it under meters)")
    if plan.quota is not None:
        quota_meter = meters.get(plan.quota.meter_id)
        if quota_meter is None:
            raise _fail(f"{path}.quota.meter", f"unknown meter {plan.quota.meter_id!r}")
        if quota_meter.aggregation is not Aggregation.COUNT:
            raise _fail(f"{path}.quota.meter", f"quota meter {quota_meter.id!r} must count events")


def credit_kinds(catalog: Catalog) -> dict[str, bool]:
    """meter id -> True when its credits are meter units, False when money: money when some plan includes
    money credits of it, units otherwise (unit inclusions, or none at all, e.g. report top-ups). The kind
    each credit ledger declares per meter, for the worker and for the edge's previews alike."""
    money = {meter_id for plan in catalog.plans.values() for meter_id, pricing in plan.meters.items()
             if pricing.included is not None and pricing.included.amount is not None}
    units = {meter_id for plan in catalog.plans.values() for meter_id, pricing in plan.meters.items()
             if pricing.included is not None and pricing.included.units is not None}
    # NOTE: a meter billed without any included credit draws money credits (granted ones) against its gross
    # amount at the close (`rating._rate_quantity`): its ledger holds money, or the close is refused
    # (credit_unit_mismatch, seen with a plan created through the catalog API: 30 calls at 0.05, no credits).
    billed = {meter_id for plan in catalog.plans.values() for meter_id, pricing in plan.meters.items()
              if pricing.overage is OveragePolicy.BILL and pricing.included is None}
    return {m: m not in money and (m in units or m not in billed) for m in catalog.meters}


# --- entries: a validated document split for storage (the catalog API and `billing catalog import`) ------


@dataclass(frozen=True, slots=True)
class CatalogEntries:
    """A validated catalog document split into its entries, each the mapping a document holds (in plain
    JSON values: instants as ISO 8601 text), every plan and amount-off coupon carrying its currency, so
    each can be stored alone and put back into a document (``catalog_document``) that validates the same."""

    meters: Mapping[str, Mapping[str, object]]
    plans: Mapping[str, Mapping[str, object]]
    coupons: Mapping[str, Mapping[str, object]]


def catalog_entries(data: object) -> CatalogEntries:
    """Validate ``data`` with the rules of the YAML files (``Catalog.from_dict``) and split it into entries."""
    Catalog.from_dict(data)  # NOTE: the one validation; what follows only reshapes what passed it
    document = _mapping(data, "catalog")
    default_currency = document.get("currency")

    def entries(key: str, with_currency: bool) -> dict[str, Mapping[str, object]]:
        found: dict[str, Mapping[str, object]] = {}
        for raw in _list(document.get(key, []), f"catalog.{key}"):
            entry = {name: _plain(value) for name, value in _mapping(raw, f"catalog.{key}").items()}
            needs_currency = with_currency and (key == "plans" or entry.get("amount_off") is not None)
            if needs_currency and entry.get("currency") is None:
                entry["currency"] = default_currency
            found[str(entry["id"])] = MappingProxyType(entry)
        return found

    return CatalogEntries(MappingProxyType(entries("meters", False)), MappingProxyType(entries("plans", True)),
                          MappingProxyType(entries("coupons", True)))


def catalog_document(meters: Iterable[Mapping[str, object]], plans: Iterable[Mapping[str, object]],
                     coupons: Iterable[Mapping[str, object]]) -> dict[str, object]:
    """The catalog document (version 1) holding these entries, as a YAML file would."""
    return {"version": 1, "meters": [dict(m) for m in meters], "plans": [dict(p) for p in plans],
            "coupons": [dict(c) for c in coupons]}


def catalog_error_field(error: CatalogError) -> tuple[str, str]:
    """(field, reason) of a validation error, the field relative to its entry: "catalog.plans[pro].price:
    must not be negative" -> ("price", "must not be negative"); an error of the whole entry -> ("body", ...)."""
    text = str(error)
    path, separator, reason = text.partition(": ")
    if not separator or " " in path:
        return "body", text
    _head, bracket, rest = path.partition("]")
    field = rest.lstrip(".") if bracket else ""
    return field or "body", reason


def _plain(value: object) -> object:
    """A YAML value as plain JSON: instants as ISO 8601 text, a bare date as its 00:00 UTC (as `_instant`
    reads it)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC).isoformat()
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value

"""Pricing models of a meter's usage charge: per unit, package, graduated tiers, volume tiers, and an optional
minimum per period. Pure arithmetic on exact Decimals; every priced part is rounded once to the minor unit.

The semantics follow Stripe's and Lago's documented ones:
- tiers are ordered by ``up_to``, an INCLUSIVE upper bound in units; the next tier starts just above it and
  the last tier has ``up_to`` None (open-ended). With tiers up to 1,000 and up to 5,000, unit 1,000 is in the
  first tier and unit 1,001 in the second (Stripe's ``up_to``: "up to and including"; Lago's ``to_value``);
- graduated: each unit is priced at the tier it falls in; a tier's ``flat_fee`` is added once when the tier is
  reached (Stripe's ``flat_amount``, Lago's graduated ``flat_amount``);
- volume: the period's total selects ONE tier, whose unit price applies to every unit, plus that tier's flat
  fee once (Stripe's ``tiers_mode: volume``, Lago's volume model);
- package: a price per block of ``package_size`` units, a started block is a whole block (Stripe's
  ``transform_quantity`` with ``round: up``, Lago's package model);
- minimum: when the meter's charge for a period is below ``minimum``, a "minimum commitment" part tops it up
  to the minimum (Lago's spending minimum and its true-up fee), also when nothing was used; a period cut short
  (a stub first period, a cancel-now) owes its share of it (``minimum_share``; Lago prorates it too).

# NOTE: included units (the plan's unit credits) are the period's FIRST units: they take the first tier
# positions of a graduated price (so the billable units start at the position after them), count in the
# total that selects a volume tier (the billable units are priced at that tier), and are subtracted before
# packages are counted (Lago's package ``free_units``). One rule per model, written once here.

Late usage (``marginal``): a period's charge is a function of its cumulative state (units so far, included
units among them). Units that arrive after a close are priced as the difference between the parts of the new
state and those of the state already billed, part by part, each part being the difference of two amounts
rounded once: the sum over any split of a period's usage therefore equals the charge of the whole at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, Context, Decimal
from enum import StrEnum
from fractions import Fraction

from shared.domain.errors import CatalogError
from shared.domain.money import Money, UnitPrice, line_amount, minor_units

_EXACT = Context(prec=80)
_ZERO = Decimal(0)
_WHOLE = Fraction(1)


class PricingModel(StrEnum):
    PER_UNIT = "per_unit"
    PACKAGE = "package"
    GRADUATED = "graduated"
    VOLUME = "volume"


@dataclass(frozen=True, slots=True)
class Tier:
    """One band of a tiered price: units up to and including ``up_to`` (None: no bound, the last tier)."""

    up_to: Decimal | None
    unit_price: Decimal = _ZERO
    flat_fee: Decimal = _ZERO


@dataclass(frozen=True, slots=True)
class PricedPart:
    """One rounded part of a meter's charge: one invoice line.

    ``key`` names the part stably across ratings of the same period (``units``, ``packages``, ``tier2``,
    ``tier2_flat``, ``minimum``) so late usage can be priced part by part. ``quantity`` is the number of
    units the part prices (0 for a flat fee or the minimum top-up); ``unit_price`` is None when the part is
    not a quantity times a unit price (flat fees, packages, the minimum).
    """

    key: str
    label: str
    quantity: Decimal
    unit_price: UnitPrice | None
    amount: Money


@dataclass(frozen=True, slots=True)
class UsagePrice:
    """How a meter's usage is charged per period; amounts are exact Decimals in major units of ``currency``."""

    model: PricingModel
    currency: str
    unit_price: Decimal | None = None
    package_size: Decimal | None = None
    package_price: Decimal | None = None
    tiers: tuple[Tier, ...] = ()
    minimum: Money | None = None

    def __post_init__(self) -> None:
        if self.model is PricingModel.PER_UNIT and (self.unit_price is None or self.unit_price < 0):
            raise CatalogError("a per unit price needs a unit_price >= 0")
        if self.model is PricingModel.PACKAGE:
            size = self.package_size
            if size is None or size <= 0 or size != size.to_integral():
                raise CatalogError("a package price needs a package_size that is a whole number > 0")
            if self.package_price is None or self.package_price < 0:
                raise CatalogError("a package price needs a package_price >= 0")
        if self.model in (PricingModel.GRADUATED, PricingModel.VOLUME):
            check_tiers(self.tiers)
        if self.minimum is not None and (self.minimum.currency != self.currency or self.minimum.is_negative()):
            raise CatalogError(f"a minimum must be a non-negative amount in {self.currency}")

    def charge(self, quantity: Decimal, included: Decimal = _ZERO,
               minimum_share: Fraction = _WHOLE) -> tuple[PricedPart, ...]:
        """The parts of the charge of a period's ``quantity`` units, the first ``included`` of them covered
        by included units (see the module's NOTE); the minimum is ``minimum_share`` of the plan's (rounded
        once). Parts with nothing to show are left out."""
        if quantity < 0 or included < 0:
            raise CatalogError(f"cannot price {quantity} units with {included} included")
        included = min(included, quantity)
        parts = [p for p in self._usage_parts(quantity, included) if p.quantity or p.amount.amount_minor]
        if self.minimum is not None:
            minimum = self.minimum if minimum_share == _WHOLE else self.minimum.scale(minimum_share)
            charged = sum((p.amount.amount_minor for p in parts), 0)
            if charged < minimum.amount_minor:
                short = Money(minimum.amount_minor - charged, self.currency)
                parts.append(PricedPart("minimum", f"minimum commitment {_amount_text(minimum)}",
                                        _ZERO, None, short))
        return tuple(parts)

    def marginal(self, before: tuple[Decimal, Decimal], after: tuple[Decimal, Decimal],
                 minimum_share: Fraction = _WHOLE) -> tuple[PricedPart, ...]:
        """What moving a period from ``before`` to ``after`` (each ``(units, included units)``) adds: the
        difference of the two charges, part by part (a volume tier left behind shows as a negative part)."""
        old = {p.key: p for p in self.charge(*before, minimum_share)}
        new = self.charge(*after, minimum_share)
        out: list[PricedPart] = []
        for part in new:
            was = old.pop(part.key, None)
            if was is None:
                out.append(part)
                continue
            moved = PricedPart(part.key, part.label, part.quantity - was.quantity, part.unit_price,
                               part.amount - was.amount)
            if moved.quantity or moved.amount.amount_minor:
                out.append(moved)
        for was in old.values():  # parts the new state no longer has (a volume tier left, a minimum met)
            out.append(PricedPart(was.key, was.label, -was.quantity, was.unit_price, -was.amount))
        return tuple(out)

    def total(self, quantity: Decimal, included: Decimal = _ZERO) -> Money:
        return Money(sum((p.amount.amount_minor for p in self.charge(quantity, included)), 0), self.currency)

    # --- the models -------------------------------------------------------------------------------

    def _usage_parts(self, quantity: Decimal, included: Decimal) -> list[PricedPart]:
        billable = _EXACT.subtract(quantity, included)
        if self.model is PricingModel.PER_UNIT:
            if self.unit_price is None:
                raise CatalogError("a per unit price needs a unit_price")
            price = UnitPrice(self.unit_price, self.currency)
            return [PricedPart("units", "", billable, price, line_amount(billable, price))]
        if self.model is PricingModel.PACKAGE:
            if self.package_size is None or self.package_price is None:
                raise CatalogError("a package price needs a package_size and a package_price")
            packages = _ceil_div(billable, self.package_size)
            price = UnitPrice(self.package_price, self.currency)
            label = (f"{_count(packages)} package{'s' if packages != 1 else ''} of {_count(self.package_size)} "
                     f"at {_price_text(price)}")
            return [PricedPart("packages", label, billable, None, line_amount(packages, price))]
        if self.model is PricingModel.GRADUATED:
            return self._graduated(quantity, included)
        return self._volume(quantity, included)

    def _graduated(self, quantity: Decimal, included: Decimal) -> list[PricedPart]:
        parts: list[PricedPart] = []
        low = _ZERO
        for number, tier in enumerate(self.tiers, start=1):
            high = quantity if tier.up_to is None else min(quantity, tier.up_to)
            units = max(_ZERO, _EXACT.subtract(high, max(included, low)))
            if units > 0:
                price = UnitPrice(tier.unit_price, self.currency)
                label = f"tier {number} ({_range_text(low, tier.up_to)})"
                parts.append(PricedPart(f"tier{number}", label, units, price, line_amount(units, price)))
                if tier.flat_fee:
                    parts.append(PricedPart(f"tier{number}_flat", f"tier {number} flat fee", _ZERO, None,
                                            Money.of(tier.flat_fee, self.currency)))
            if tier.up_to is None or quantity <= tier.up_to:
                break
            low = tier.up_to
        return parts

    def _volume(self, quantity: Decimal, included: Decimal) -> list[PricedPart]:
        billable = _EXACT.subtract(quantity, included)
        if billable <= 0:
            return []
        low = _ZERO
        for number, tier in enumerate(self.tiers, start=1):
            if tier.up_to is None or quantity <= tier.up_to:
                price = UnitPrice(tier.unit_price, self.currency)
                label = f"volume tier {number} ({_range_text(low, tier.up_to)}), all units"
                parts = [PricedPart(f"tier{number}", label, billable, price, line_amount(billable, price))]
                if tier.flat_fee:
                    parts.append(PricedPart(f"tier{number}_flat", f"volume tier {number} flat fee", _ZERO, None,
                                            Money.of(tier.flat_fee, self.currency)))
                return parts
            low = tier.up_to
        raise CatalogError("the last tier must have no upper bound")  # check_tiers makes this unreachable


def check_tiers(tiers: Sequence[Tier]) -> None:
    """Tiers must be non-empty, with strictly increasing positive bounds, only the last one unbounded, and
    non-negative prices. Raises ``CatalogError`` naming the tier as the catalog does (``tiers[0]`` first)."""
    if not tiers:
        raise CatalogError("tiers: at least one tier is required")
    previous = _ZERO
    for number, tier in enumerate(tiers):
        last = number == len(tiers) - 1
        if tier.up_to is None and not last:
            raise CatalogError(f"tiers[{number}].up_to: only the last tier may be unbounded (up_to: null)")
        if tier.up_to is not None:
            if last:
                raise CatalogError(f"tiers[{number}].up_to: the last tier must be unbounded (up_to: null)")
            if tier.up_to <= previous:
                raise CatalogError(f"tiers[{number}].up_to: {tier.up_to} must be greater than {previous}")
            previous = tier.up_to
        if tier.unit_price < 0:
            raise CatalogError(f"tiers[{number}].unit_price: must not be negative")
        if tier.flat_fee < 0:
            raise CatalogError(f"tiers[{number}].flat_fee: must not be negative")


def _ceil_div(units: Decimal, size: Decimal) -> Decimal:
    if units <= 0:
        return _ZERO
    return _EXACT.divide(units, size).to_integral_value(rounding=ROUND_CEILING, context=_EXACT)


def _count(value: Decimal) -> str:
    normal = value.normalize()
    return f"{int(normal):,}" if normal == normal.to_integral() else f"{normal:,f}"


def _range_text(low: Decimal, up_to: Decimal | None) -> str:
    # NOTE: bounds are inclusive: "1,001 - 5,000" for whole units (the usual case), "above 1,000" for the last.
    if up_to is None:
        return f"above {_count(low)}"
    start = low + 1 if low == low.to_integral() else low
    return f"{_count(start) if low else '1'} - {_count(up_to)}"


def _price_text(price: UnitPrice) -> str:
    exponent = price.amount.normalize().as_tuple().exponent
    digits = max(minor_units(price.currency), -exponent if isinstance(exponent, int) else 0)
    return f"{price.currency} {price.amount:,.{digits}f}"


def _amount_text(amount: Money) -> str:
    return f"{amount.currency} {amount.to_decimal():f}"

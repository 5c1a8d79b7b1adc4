"""What the usage of the running period will cost at its close, given the credits left: a preview.

The rating is the domain's (`shared.domain.rating.preview_usage_charges`, the same arithmetic as the period
close, consuming nothing); this module only turns the read model's balances (money in minor units, or
units, per meter) into the domain's credit balances. Coupons, tax and late-usage adjustments are applied
by the close itself and are not in the preview.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

from shared.domain.catalog import CreditAmount, Plan
from shared.domain.money import Money
from shared.domain.rating import MeterTreatment, preview_usage_charges
from shared.domain.rating import UsageChargeEstimate as MeterEstimate

__all__ = ["MeterEstimate", "MeterTreatment", "estimate_meter", "estimate_usage"]


def _balance(plan: Plan, meter_id: str, credit_minor: int, credit_units: Decimal) -> CreditAmount:
    pricing = plan.pricing_for(meter_id)
    in_units = pricing is not None and pricing.included is not None and pricing.included.units is not None
    return credit_units if in_units else Money(credit_minor, plan.currency)


def estimate_meter(plan: Plan, meter_id: str, quantity: Decimal, *, credit_minor: int,
                   credit_units: Decimal) -> MeterEstimate:
    """Rate `quantity` of one meter against the credits left (money in minor units, or units)."""
    balances = {meter_id: _balance(plan, meter_id, credit_minor, credit_units)}
    return next(e for e in preview_usage_charges(plan, {meter_id: quantity}, balances) if e.meter_id == meter_id)


def estimate_usage(plan: Plan, totals: Mapping[str, Decimal], credit_minor: Mapping[str, int],
                   credit_units: Mapping[str, Decimal]) -> list[MeterEstimate]:
    """One estimate per meter the plan prices or the usage names, sorted by meter id."""
    meters = set(plan.meters) | set(totals)
    balances = {m: _balance(plan, m, credit_minor.get(m, 0), credit_units.get(m, Decimal(0))) for m in meters}
    return list(preview_usage_charges(plan, totals, balances))

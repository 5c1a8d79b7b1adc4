"""What the usage of the running period will cost at its close, given the credits left: a preview.

# NOTE: this mirrors how `shared.domain.rating` rates one meter at a period close (credits in units
# reduce the billable quantity; money credits reduce the rounded gross amount; BLOCK meters are never
# billed, their credits being drawn at the edge), without touching the ledger. It belongs next to
# `close_period` in the domain as a read-only preview; it lives here until the domain offers one.
# Coupons, tax and late-usage adjustments are applied by the close itself and are not in the preview.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from shared.domain.catalog import OveragePolicy, Plan
from shared.domain.money import Money, line_amount


class MeterTreatment(StrEnum):
    BILL = "bill"  # billed in arrears beyond the credits
    BLOCK = "block"  # refused beyond the credits, never billed
    UNPRICED = "unpriced"  # the plan does not price this meter: the close reports it as unbilled


@dataclass(frozen=True)
class MeterEstimate:
    meter_id: str
    quantity: Decimal
    treatment: MeterTreatment
    gross: Money | None  # quantity x unit price, before credits (None: not billed)
    credit_units_applied: Decimal
    credit_applied: Money | None
    billable_quantity: Decimal
    charge: Money  # what the close will bill for this meter, before coupon and tax


def estimate_meter(plan: Plan, meter_id: str, quantity: Decimal, *, credit_minor: int,
                   credit_units: Decimal) -> MeterEstimate:
    """Rate `quantity` of one meter against the credits left (money in minor units, or units)."""
    zero = Money.zero(plan.currency)
    pricing = plan.pricing_for(meter_id)
    if pricing is None or pricing.overage is OveragePolicy.BLOCK or pricing.unit_price is None:
        treatment = MeterTreatment.UNPRICED if pricing is None else MeterTreatment.BLOCK
        return MeterEstimate(meter_id, quantity, treatment, None, Decimal(0), None, Decimal(0), zero)
    in_units = pricing.included is not None and pricing.included.units is not None
    if in_units:
        covered_units = min(max(credit_units, Decimal(0)), quantity)
        billable = quantity - covered_units
        charge = line_amount(billable, pricing.unit_price)
        return MeterEstimate(meter_id, quantity, MeterTreatment.BILL, line_amount(quantity, pricing.unit_price),
                             covered_units, None, billable, charge)
    gross = line_amount(quantity, pricing.unit_price)
    covered = Money(max(min(credit_minor, gross.amount_minor), 0), plan.currency) if gross.is_positive() else zero
    return MeterEstimate(meter_id, quantity, MeterTreatment.BILL, gross, Decimal(0), covered, quantity,
                         gross - covered)


def estimate_usage(plan: Plan, totals: Mapping[str, Decimal], credit_minor: Mapping[str, int],
                   credit_units: Mapping[str, Decimal]) -> list[MeterEstimate]:
    """One estimate per meter the plan prices or the usage names, sorted by meter id."""
    meters = sorted(set(plan.meters) | set(totals))
    return [estimate_meter(plan, m, totals.get(m, Decimal(0)), credit_minor=credit_minor.get(m, 0),
                           credit_units=credit_units.get(m, Decimal(0))) for m in meters]

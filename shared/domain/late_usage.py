"""Late usage: usage of a period already closed (and finalised) that arrived after its close, billed by the
next close as ADJUSTMENT lines (``rating.LateUsage``).

``group_late_usage`` is how a close groups it, written once for the worker's close (hour by hour, from the
buckets it marks billed) and for the edge's preview of that close (per meter, from a read of the same rows):
one item per meter over the span of hours its late usage came from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal

from shared.domain.calendar import BillingAnchor, Interval, Period, period_containing
from shared.domain.catalog import MeterId, Plan
from shared.domain.rating import LateUsage

USAGE_HOUR = timedelta(hours=1)  # usage is stored per UTC hour of its events' timestamps


def group_late_usage(runs: Iterable[tuple[str, datetime, datetime, Decimal]]) -> list[LateUsage]:
    """Late usage as a close bills it: one item per meter (sorted by meter id) over the hours it came from,
    [start of the first hour, end of the last), for the quantity summed; a meter whose late quantity sums to
    zero bills nothing. ``runs``: (meter, start of the first hour, start of the last hour, quantity), one per
    hour (the worker's close) or one per meter (a preview's read): the grouping is the same."""
    spans: dict[str, tuple[datetime, datetime, Decimal]] = {}
    for meter, first, last, quantity in runs:
        lo, hi, total = spans.get(meter, (first, last, Decimal(0)))
        spans[meter] = (min(lo, first), max(hi, last), total + quantity)
    return [LateUsage(MeterId(meter), Period(lo, hi + USAGE_HOUR), total)
            for meter, (lo, hi, total) in sorted(spans.items()) if total]


def late_usage_as_rated(late: Sequence[LateUsage], hours: Iterable[tuple[str, datetime, Decimal]], plan: Plan, *,
                        anchor: BillingAnchor, interval: Interval, seats: int,
                        billed_before: Callable[[str, Period, Decimal], Decimal]) -> list[LateUsage]:
    """Late usage as a close rates it, for the worker's close and the edge's preview of it alike: per unit
    meters as ``late`` groups them (``group_late_usage``); meters with a pricing model (tiers, packages, a
    minimum) per (meter, anchored period its hours belong to), with what that period billed before
    (``billed_before(meter, period, late quantity)``), so rating prices the late units at their marginal
    position. ``hours``: (meter, start of the hour, late quantity), one per hour.

    # NOTE: the period of a late hour is the anchored period containing it (a plan or interval change since may
    # have cut it differently); the included units that period drew are taken as min(billed, the plan's
    # included units), what its close drew when nothing else fed the meter's credits.
    """
    hours = list(hours)
    meters = {item.meter_id for item in late} | {meter for meter, _, _ in hours}
    pricings = {meter: plan.pricing_for(meter) for meter in meters}  # "<meter>/<value>" too
    priced = {meter for meter, pricing in pricings.items() if pricing is not None and pricing.price is not None}
    out = [item for item in late if item.meter_id not in priced]
    groups: dict[tuple[str, Period], Decimal] = {}
    for meter, bucket_start, quantity in hours:
        if meter in priced:
            key = (meter, period_containing(anchor, interval, bucket_start))
            groups[key] = groups.get(key, Decimal(0)) + quantity
    for (meter, period), quantity in groups.items():
        if not quantity:
            continue
        billed = max(Decimal(0), billed_before(meter, period, quantity))
        pricing = pricings[meter]
        included = pricing.included if pricing is not None else None
        units = included.for_seats(seats) if included is not None else None
        out.append(LateUsage(MeterId(meter), period, quantity, billed_quantity=billed,
                             billed_included=min(billed, units) if isinstance(units, Decimal) else Decimal(0)))
    return sorted(out, key=lambda item: (item.meter_id, item.period.start))

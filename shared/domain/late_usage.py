"""Late usage: usage of a period already closed (and finalised) that arrived after its close, billed by the
next close as ADJUSTMENT lines (``rating.LateUsage``).

``group_late_usage`` is how a close groups it, written once for the worker's close (hour by hour, from the
buckets it marks billed) and for the edge's preview of that close (per meter, from a read of the same rows):
one item per meter over the span of hours its late usage came from.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal

from shared.domain.calendar import Period
from shared.domain.catalog import MeterId
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

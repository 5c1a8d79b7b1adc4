"""Usage of a draft invoice's period that arrived during its grace (issue 14, item 2).

A period close bills the usage of [period_start, period_end) it finds and marks its hour buckets billed
(``usage.close_usages``). When the invoice stays DRAFT for a grace, events timestamped inside that period can
still arrive; finalising the draft takes them here, so they are billed on it as usage of its period rather
than as late usage on the next invoice:

- what arrived = the period's events now - what the close billed (``usage_closes.totals``), per meter;
- the buckets are marked billed like a close marks them (whole hours inside the period: all of it; the hour
  holding period_end: its events before period_end; the hour holding period_start: the rest), so the next
  close does not bill them again as late usage;
- ``usage_closes.totals`` is raised by what was taken, so the stored close still says what the invoice bills.

# NOTE: once a later close has run (the subscription's usage watermark is past this period), that close has
# already billed such usage as late usage: nothing is taken. Runs in the finalising batch's transaction, under
# the same row locks as a close (watermark, then buckets), so usage committed concurrently is in exactly one
# of the draft and the next close.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, localcontext

import sqlalchemy as sa

from services.billing_worker.adapters.usage_close import _EXACT_SUMS, BUCKET, _event_sums, _floor_hour
from shared.adapters.postgres.schema.usage import usage_aggregates, usage_closes, usage_watermarks
from shared.domain.catalog import MeterId
from shared.domain.rating import GraceUsage


def grace_usage(conn: sa.Connection, subscription_id: str, period_start: datetime,
                period_end: datetime) -> GraceUsage:
    """Take the usage of [period_start, period_end) not billed by its close (see the module docstring)."""
    lo, hi = period_start.astimezone(UTC), period_end.astimezone(UTC)
    closes = usage_closes.c
    stored = conn.execute(sa.select(closes.totals).where(closes.subscription_id == subscription_id,
                                                         closes.period_end == hi).with_for_update()).first()
    closed = {MeterId(m): Decimal(q) for m, q in (stored.totals if stored else {}).items()}
    watermark = conn.execute(sa.select(usage_watermarks.c.closed_through).where(
        usage_watermarks.c.subscription_id == subscription_id).with_for_update()).scalar_one_or_none()
    if stored is None or (watermark is not None and watermark.astimezone(UTC) > hi):
        return GraceUsage(closed=closed, added={})
    agg = usage_aggregates.c
    lo_bucket, hi_bucket = _floor_hour(lo), _floor_hour(hi)
    buckets = conn.execute(
        sa.select(agg.meter_id, agg.bucket_start, agg.quantity, agg.billed_quantity, agg.event_count)
        .where(agg.subscription_id == subscription_id, agg.bucket_start >= lo_bucket, agg.bucket_start <= hi_bucket)
        .order_by(agg.meter_id, agg.bucket_start).with_for_update()).all()
    with localcontext(_EXACT_SUMS):
        now = _event_sums(conn, subscription_id, lo, hi)
        added = {MeterId(m): q - closed.get(MeterId(m), Decimal(0)) for m, q in now.items()}
        added = {m: q for m, q in added.items() if q > 0}
        if not added:
            return GraceUsage(closed=closed, added={})
        in_hi_bucket = _event_sums(conn, subscription_id, hi_bucket, hi) if hi != hi_bucket else {}
        marks: list[tuple[str, datetime, Decimal]] = []
        taken: dict[str, Decimal] = {}
        lo_rows = {}
        for r in buckets:
            start = r.bucket_start.astimezone(UTC)
            if r.meter_id not in added:
                continue
            if start == lo_bucket and lo != lo_bucket:
                lo_rows[r.meter_id] = r  # its share is what is left once the other hours are counted
                continue
            if start == hi_bucket:
                if hi == hi_bucket:
                    continue  # starts at period_end: the next period's
                new_billed = in_hi_bucket.get(r.meter_id, Decimal(0))
            elif start + BUCKET <= hi:
                new_billed = Decimal(r.quantity)
            else:
                continue
            increment = new_billed - Decimal(r.billed_quantity)
            if increment > 0:
                marks.append((r.meter_id, r.bucket_start, new_billed))
                taken[r.meter_id] = taken.get(r.meter_id, Decimal(0)) + increment
        for meter, r in lo_rows.items():
            rest = added[MeterId(meter)] - taken.get(meter, Decimal(0))
            if rest > 0:
                marks.append((meter, r.bucket_start, Decimal(r.billed_quantity) + rest))
        totals = {m: str(closed.get(m, Decimal(0)) + added.get(m, Decimal(0))) for m in set(closed) | set(added)}
    # the bucket's events billed so far, for invoice line -> events (when the column is there)
    traced = {"billed_through": agg.updated_at} if "billed_through" in agg else {}
    for meter, bucket_start, billed in marks:
        conn.execute(sa.update(usage_aggregates).where(
            agg.subscription_id == subscription_id, agg.meter_id == meter, agg.bucket_start == bucket_start)
            .values(billed_quantity=billed, **traced))
    conn.execute(sa.update(usage_closes).where(closes.subscription_id == subscription_id, closes.period_end == hi)
                 .values(totals=totals))
    return GraceUsage(closed=closed, added=added)

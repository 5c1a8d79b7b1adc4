"""What a closed period has already billed of its meters: the position late units of a tiered price start at.

A late unit of a graduated, volume or package price is priced at its marginal position after what its period
billed (``shared.domain.pricing``). The buckets record which of their events were billed: those ingested up to
``usage_aggregates.billed_through`` (set by whatever billed the bucket: a close, a late adjustment, usage billed
onto a draft). Read inside the close's transaction after its own marks, this counts the late units being billed
now too; the caller subtracts them. The edge's preview (``billing_snapshots``) reads it before any mark: what
the period billed before its late units, as the close will see it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa

_BILLED = sa.text("""
SELECT e.meter_id, sum(e.quantity) AS quantity
FROM usage_events e
JOIN usage_aggregates a ON a.subscription_id = e.subscription_id AND a.meter_id = e.meter_id
                       AND a.bucket_start <= e.occurred_at AND e.occurred_at < a.bucket_start + interval '1 hour'
WHERE e.subscription_id = :sub AND e.meter_id = ANY(CAST(:meters AS text[]))
  AND e.occurred_at >= :lo AND e.occurred_at < :hi
  AND a.billed_through IS NOT NULL AND e.ingested_at <= a.billed_through
GROUP BY e.meter_id""")


def billed_usage(conn: sa.Connection, subscription_id: str, meter_ids: Sequence[str], period_start: datetime,
                 period_end: datetime) -> dict[str, Decimal]:
    """Units of each of ``meter_ids`` with a timestamp in [period_start, period_end) billed so far (0 if none)."""
    out = {meter: Decimal(0) for meter in meter_ids}
    if not meter_ids or period_start >= period_end:
        return out
    for meter, quantity in conn.execute(_BILLED, {"sub": subscription_id, "meters": list(meter_ids),
                                                  "lo": period_start, "hi": period_end}):
        out[meter] = Decimal(quantity)
    return out

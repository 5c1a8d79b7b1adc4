"""The read behind Metronome's usage queries: a customer's materialised usage per meter and UTC hour
(`usage_aggregates`, written by the billing worker exactly once per event), summed over the customer's
subscriptions. The windows and groups are built from these hours by `services.ingest.metronome.usage`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa

from shared.adapters.postgres.schema.billing import subscriptions
from shared.adapters.postgres.schema.usage import usage_aggregates
from shared.domain.catalog import DIMENSION_SEPARATOR


@dataclass(frozen=True)
class HourTotal:
    """What one customer's events of one meter (with its dimension value, if any) added up to in one hour."""

    customer_id: str
    meter_id: str  # "<meter>" or "<meter>/<value>"
    hour: datetime
    quantity: Decimal

    @property
    def metric_id(self) -> str:
        return self.meter_id.split(DIMENSION_SEPARATOR, 1)[0]

    @property
    def group_value(self) -> str | None:
        parts = self.meter_id.split(DIMENSION_SEPARATOR, 1)
        return parts[1] if len(parts) == 2 else None


def hour_totals(engine: sa.Engine, *, starting_on: datetime, ending_before: datetime,
                customer_ids: Sequence[str] | None = None, metric_ids: Sequence[str] | None = None,
                ) -> list[HourTotal]:
    """The usage of [starting_on, ending_before) per customer, meter (with its dimension value) and hour;
    only of `customer_ids` and of the meters `metric_ids` (with their dimension values) when given."""
    bucket = usage_aggregates.c.bucket_start
    query = (sa.select(subscriptions.c.customer_id, usage_aggregates.c.meter_id, bucket,
                       sa.func.sum(usage_aggregates.c.quantity).label("quantity"))
             .join(subscriptions, subscriptions.c.subscription_id == usage_aggregates.c.subscription_id)
             .where(bucket >= starting_on, bucket < ending_before)
             .group_by(subscriptions.c.customer_id, usage_aggregates.c.meter_id, bucket))
    if customer_ids is not None:
        query = query.where(subscriptions.c.customer_id.in_(list(customer_ids)))
    if metric_ids is not None:
        meter = usage_aggregates.c.meter_id
        query = query.where(sa.or_(meter.in_(list(metric_ids)), *(
            meter.startswith(m + DIMENSION_SEPARATOR, autoescape=True) for m in metric_ids)))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [HourTotal(r.customer_id, r.meter_id, r.bucket_start, Decimal(r.quantity)) for r in rows]

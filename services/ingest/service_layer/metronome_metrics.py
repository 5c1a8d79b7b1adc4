"""Metronome's billable metrics over our meters: create, read, list, archive (through the catalog's use cases,
so a metric is a meter like one written in YAML or through `/v1/meters`), and the metrics of a customer (the
meters its live subscription's plan prices)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from services.ingest.service_layer import catalog as catalog_use_cases
from services.ingest.service_layer.refusals import CatalogRefusal, MetronomeRefusal
from shared.domain.catalog import Catalog, MeterId, PlanId


@dataclass(frozen=True)
class Metric:
    id: str
    definition: dict[str, Any]
    archived_at: datetime | None


def new_metric_id() -> str:
    return f"bm_{uuid.uuid4().hex[:20]}"


def create(engine: sa.Engine, definition: Mapping[str, Any], write: catalog_use_cases.Write) -> Metric:
    entry = catalog_use_cases.create_meter(engine, definition, write)
    return Metric(entry.id, entry.definition, entry.archived_at)


def metric(engine: sa.Engine, catalog: Catalog, metric_id: str) -> Metric:
    """A stored meter, or one of the served catalog's (its YAML meters before the first catalog write)."""
    try:
        entry = catalog_use_cases.meter(engine, metric_id)
    except CatalogRefusal:
        served = catalog.meters.get(MeterId(metric_id))
        if served is None:
            raise MetronomeRefusal(f"no billable metric {metric_id!r}", code="not_found",
                                   fields=[("billable_metric_id", "unknown billable metric")]) from None
        return Metric(served.id, _served_definition(served), None)
    return Metric(entry.id, entry.definition, entry.archived_at)


def metrics(engine: sa.Engine, catalog: Catalog, *, include_archived: bool,
            keep: Callable[[str], bool] = lambda _: True) -> list[Metric]:
    """Every metric by id: the stored meters and the served catalog's others (see `metric`)."""
    stored = {e.id: Metric(e.id, e.definition, e.archived_at) for e in catalog_use_cases.meters(engine)}
    for meter_id, meter in catalog.meters.items():
        stored.setdefault(meter_id, Metric(meter_id, _served_definition(meter), None))
    return [m for _, m in sorted(stored.items())
            if (include_archived or m.archived_at is None) and keep(m.id)]


def archive(engine: sa.Engine, metric_id: str, write: catalog_use_cases.Write) -> Metric:
    try:
        entry = catalog_use_cases.update_meter(engine, metric_id, {"archived": True}, write)
    except CatalogRefusal as refused:
        if refused.code == "unknown_meter":
            raise MetronomeRefusal(f"no billable metric {metric_id!r}", code="not_found",
                                   fields=[("id", "unknown billable metric")]) from None
        raise
    return Metric(entry.id, entry.definition, entry.archived_at)


def plan_meters(catalog: Catalog, plan_id: str | None) -> set[str]:
    """The meters a plan prices (none without a plan, or for a plan no longer served)."""
    if plan_id is None or plan_id not in catalog.plans:
        return set()
    return {str(m) for m in catalog.plans[PlanId(plan_id)].meters}


def _served_definition(meter: Any) -> dict[str, Any]:
    definition = {"id": meter.id, "name": meter.name, "unit": meter.unit, "event_type": meter.event_type,
                  "aggregation": str(meter.aggregation.value)}
    if meter.value_property is not None:
        definition["value_property"] = meter.value_property
    if meter.dimension is not None:
        definition["dimension"] = meter.dimension
    return definition

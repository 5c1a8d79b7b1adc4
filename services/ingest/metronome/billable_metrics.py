"""Metronome's billable metrics over our meters (pure translations).

| Metronome | ours |
|---|---|
| `id` | meter id (`bm_<hex>`, made at create) |
| `name` | meter name |
| `event_type_filter.in_values` (exactly one) | `event_type`; several, none or `not_in_values`: not_supported |
| `aggregation_type` COUNT / SUM | `aggregation` count / sum; MAX, LATEST, UNIQUE: not_supported |
| `aggregation_key` | `value_property` (required by SUM), also the meter's unit |
| `property_filters` | only `{name: <aggregation_key or group key>, exists: true}`; value filters: not_supported |
| `group_keys` (one key) | `dimension` (usage aggregated per value of that property); several: not_supported |
| `sql`, `custom_fields` | not_supported |
| `archived_at` | the meter's archival |
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from services.ingest.metronome.customers import not_supported
from services.ingest.service_layer.refusals import MetronomeRefusal

AGGREGATIONS = {"COUNT": "count", "SUM": "sum"}
COUNT_UNIT = "events"


def meter_definition(meter_id: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Our meter definition (a catalog document's meter entry) for Metronome's create parameters; what a
    meter cannot express is refused as not supported."""
    for unsupported in ("sql", "custom_fields"):
        if params.get(unsupported):
            raise not_supported(unsupported, f"billable metric {unsupported}")
    aggregation_type = params.get("aggregation_type") or "COUNT"
    aggregation = AGGREGATIONS.get(str(aggregation_type))
    if aggregation is None:
        raise not_supported("aggregation_type", f"aggregation {aggregation_type!r} (COUNT and SUM are)")
    event_type = _event_type(params.get("event_type_filter"))
    key = params.get("aggregation_key")
    if aggregation == "sum" and not key:
        raise MetronomeRefusal("a SUM billable metric needs an aggregation_key", code="invalid",
                               fields=[("aggregation_key", "required by SUM")])
    if aggregation == "count" and key:
        raise not_supported("aggregation_key", "an aggregation key on a COUNT metric")
    dimension = _dimension(params.get("group_keys") or ())
    _check_property_filters(params.get("property_filters") or (), {k for k in (key, dimension) if k})
    definition: dict[str, Any] = {"id": meter_id, "name": params["name"], "event_type": event_type,
                                  "aggregation": aggregation, "unit": key if aggregation == "sum" else COUNT_UNIT}
    if aggregation == "sum":
        definition["value_property"] = key
    if dimension is not None:
        definition["dimension"] = dimension
    return definition


def _event_type(event_filter: Mapping[str, Any] | None) -> str:
    values = list((event_filter or {}).get("in_values") or ())
    if (event_filter or {}).get("not_in_values"):
        raise not_supported("event_type_filter.not_in_values", "excluding event types")
    if len(values) != 1:
        raise not_supported("event_type_filter.in_values", "a billable metric over other than exactly one event type")
    return str(values[0])


def _dimension(group_keys: Sequence[Sequence[str]]) -> str | None:
    keys = [list(g) for g in group_keys]
    if not keys:
        return None
    if len(keys) > 1 or len(keys[0]) != 1:
        raise not_supported("group_keys", "more than one group key (one property is)")
    return str(keys[0][0])


def _check_property_filters(filters: Sequence[Mapping[str, Any]], allowed: set[str]) -> None:
    for index, rule in enumerate(filters):
        if rule.get("in_values") or rule.get("not_in_values"):
            raise not_supported(f"property_filters.{index}", "filtering events on property values")
        if rule.get("name") not in allowed or rule.get("exists") is False:
            raise not_supported(f"property_filters.{index}",
                                "a property filter other than `exists` on the aggregation or group key")


def metric_json(meter_id: str, definition: Mapping[str, Any], archived_at: datetime | None) -> dict[str, Any]:
    """Metronome's billable metric (`BillableMetricRetrieveResponse.data` and the list's items)."""
    aggregation = str(definition.get("aggregation", "count")).upper()
    key = definition.get("value_property")
    dimension = definition.get("dimension")
    filters = [{"name": name, "exists": True} for name in (key, dimension) if name]
    return {"id": meter_id, "name": definition.get("name", meter_id), "aggregation_type": aggregation,
            "aggregation_key": key, "event_type_filter": {"in_values": [definition.get("event_type")]},
            "property_filters": filters, "group_keys": [[dimension]] if dimension else [],
            "custom_fields": {}, "archived_at": archived_at.isoformat() if archived_at else None}

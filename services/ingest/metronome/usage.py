"""Metronome's usage queries over our materialised usage (pure): windows, rows of `usage.list` and of
`usage.list_with_groups`.

Our usage is materialised per subscription, meter and UTC hour of the event's timestamp
(`usage_aggregates`); a meter with a dimension keeps each value of its property apart as the meter
"<meter>/<value>". So HOUR, DAY and NONE windows over UTC-midnight bounds are exact sums of those hours, and
grouping is possible by the meter's dimension only (another key is not_supported).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from services.ingest.metronome.customers import not_supported
from services.ingest.service_layer.metronome_usage import HourTotal
from services.ingest.service_layer.refusals import MetronomeRefusal

WINDOWS = {"HOUR": timedelta(hours=1), "DAY": timedelta(days=1)}
MAX_WINDOWS = 24 * 93  # a quarter of hours: what one query may span


def check_bounds(starting_on: datetime, ending_before: datetime, *, aligned: bool = True) -> None:
    """Metronome's rule for usage bounds: UTC midnights, `ending_before` after `starting_on`."""
    for field, at in (("starting_on", starting_on), ("ending_before", ending_before)):
        if at.tzinfo is None:
            raise MetronomeRefusal(f"{field} needs a time zone", code="invalid", fields=[(field, "no time zone")])
        if aligned and (at.utcoffset() != timedelta(0) or at.hour or at.minute or at.second or at.microsecond):
            raise MetronomeRefusal(f"{field} must be aligned to UTC midnight", code="invalid",
                                   fields=[(field, "not a UTC midnight")])
    if ending_before <= starting_on:
        raise MetronomeRefusal("ending_before must be after starting_on", code="invalid",
                               fields=[("ending_before", "not after starting_on")])


def windows(starting_on: datetime, ending_before: datetime, size: str) -> list[tuple[datetime, datetime]]:
    """The windows of [starting_on, ending_before): hours, days, or the whole span (NONE)."""
    if size == "NONE":
        return [(starting_on, ending_before)]
    step = WINDOWS.get(size)
    if step is None:
        raise MetronomeRefusal(f"unknown window_size {size!r}", code="invalid",
                               fields=[("window_size", "HOUR, DAY or NONE")])
    if (ending_before - starting_on) / step > MAX_WINDOWS:
        raise MetronomeRefusal(f"at most {MAX_WINDOWS} windows per query", code="invalid",
                               fields=[("ending_before", "too many windows")])
    found, at = [], starting_on
    while at < ending_before:
        found.append((at, min(at + step, ending_before)))
        at += step
    return found


def _number(value: Decimal) -> float | int:
    return int(value) if value == value.to_integral_value() else float(value)


def _window_of(hour: datetime, spans: Sequence[tuple[datetime, datetime]]) -> tuple[datetime, datetime] | None:
    for span in spans:
        if span[0] <= hour < span[1]:
            return span
    return None


def list_rows(totals: Iterable[HourTotal], spans: Sequence[tuple[datetime, datetime]],
              names: Mapping[str, str], group_keys: Mapping[str, tuple[str, Sequence[str] | None]],
              pairs: Iterable[tuple[str, str]] = ()) -> list[dict[str, Any]]:
    """`usage.list` rows: every window of each (customer, metric) pair that has usage (and of `pairs`), in
    (customer, metric, window) order; a metric asked with `group_by` carries `groups` {value: number or null}
    (null: no usage of that value in the window)."""
    sums: dict[tuple[str, str, datetime], Decimal] = {}
    grouped: dict[tuple[str, str, datetime], dict[str, Decimal]] = {}
    seen = set(pairs)
    for total in totals:
        span = _window_of(total.hour, spans)
        if span is None:
            continue
        key = (total.customer_id, total.metric_id, span[0])
        seen.add((total.customer_id, total.metric_id))
        sums[key] = sums.get(key, Decimal(0)) + total.quantity
        if total.group_value is not None:
            values = grouped.setdefault(key, {})
            values[total.group_value] = values.get(total.group_value, Decimal(0)) + total.quantity
    rows = []
    for customer_id, metric_id in sorted(seen):
        for start, end in spans:
            key = (customer_id, metric_id, start)
            row: dict[str, Any] = {"customer_id": customer_id, "billable_metric_id": metric_id,
                                   "billable_metric_name": names.get(metric_id, metric_id),
                                   "start_timestamp": start.isoformat(), "end_timestamp": end.isoformat(),
                                   "value": _number(sums.get(key, Decimal(0)))}
            if metric_id in group_keys:
                _, wanted = group_keys[metric_id]
                found = grouped.get(key, {})
                shown = wanted if wanted is not None else sorted(found)
                row["groups"] = {v: _number(found[v]) if v in found else None for v in shown}
            rows.append(row)
    return rows


def group_key_of(dimension: str | None, group_key: Sequence[str] | None, group_by: Mapping[str, Any] | None,
                 ) -> tuple[str | None, Sequence[str] | None]:
    """The one key `list_with_groups` groups by (and the values asked, if any): it must be the metric's group
    key (our meter's dimension); compound keys are not supported."""
    if group_key and group_by:
        raise MetronomeRefusal("group_key and group_by cannot be used together", code="invalid",
                               fields=[("group_by", "use group_key")])
    key: str | None = None
    values: Sequence[str] | None = None
    if group_key:
        if len(group_key) != 1:
            raise not_supported("group_key", "compound group keys")
        key = group_key[0]
    elif group_by:
        key, values = str(group_by["key"]), group_by.get("values")
    if key is not None and key != dimension:
        raise not_supported("group_key", f"grouping by {key!r} (only by the metric's group key)")
    return key, values


def group_rows(totals: Iterable[HourTotal], spans: Sequence[tuple[datetime, datetime]], key: str | None,
               values: Sequence[str] | None) -> list[dict[str, Any]]:
    """`usage.list_with_groups` rows: per window, one row per group value (or one row without a key), in
    (window, value) order."""
    sums: dict[tuple[datetime, str | None], Decimal] = {}
    for total in totals:
        span = _window_of(total.hour, spans)
        if span is None:
            continue
        value = total.group_value if key is not None else None
        if values is not None and value not in values:
            continue
        sums[(span[0], value)] = sums.get((span[0], value), Decimal(0)) + total.quantity
    rows = []
    for start, end in spans:
        shown = sorted(v for (s, v) in sums if s == start and v is not None) if key is not None else [None]
        if key is not None and values is not None:
            shown = sorted(values)
        for value in shown:
            rows.append({"starting_on": start.isoformat(), "ending_before": end.isoformat(),
                         "group_key": key, "group_value": value,
                         "group": {key: value} if key is not None and value is not None else None,
                         "value": _number(sums.get((start, value), Decimal(0)))})
    return rows

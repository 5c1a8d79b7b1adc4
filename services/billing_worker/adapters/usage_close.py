"""Period-close usage totals over the hourly buckets ``usage`` writes (the edge reads them with
``shared.adapters.postgres.usage_reads``, by the same policy).

Period close (``close_usage``; ``close_usages`` for a whole billing run in a few statements), called by the
period-close handler in its transaction:

# NOTE: late-event policy. Usage is bucketed by the *event's* timestamp (UTC hour). Each bucket keeps
# what closes already billed from it (billed_quantity). Closing [period_start, period_end) bills every
# unbilled quantity with a timestamp before period_end:
#   - the part with timestamp in [period_start, period_end) is the period's usage (``totals``);
#   - the part with timestamp before period_start arrived after the period it belongs to was closed:
#     it is returned as a late adjustment (``late``), billed on this invoice as an adjustment line at
#     the current period's prices, and never silently dropped nor billed twice.
# Events with a timestamp at or after period_end stay for the next close. Partial hours at the period
# edges are resolved from the event rows, so periods need not start on the hour. Because "billed" is
# recorded per bucket under a row lock, usage committed concurrently with a close (another instance
# owning the usage partition) is either in this close or in the next one, never in both nor in neither.
# A repeated close of the same (subscription, period_end) returns the stored answer (idempotent).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal, localcontext
from typing import Any

import orjson
import sqlalchemy as sa

from shared.adapters.postgres.arrays import instant_array, number_array, text_array
from shared.adapters.postgres.schema.usage import usage_events

BUCKET = timedelta(hours=1)
# NOTE: sums and differences of bucket quantities are computed exactly: Decimal's default context keeps 28
# significant digits, and two quantities of the largest the rules accept (< 10^19, 9 decimals) already
# sum to 29.
_EXACT_SUMS = Context(prec=80)


# ----------------------------------------------------------------------------------------------- close


@dataclass(frozen=True)
class LateAdjustment:
    meter_id: str
    bucket_start: datetime  # the UTC hour the late events belong to
    quantity: Decimal
    # The bucket's late events this close billed: ingested_at in (ingested_after, ingested_through]
    # (ingested_after None: the bucket had never been billed). See usage_aggregates.billed_through.
    # Bookkeeping of which events were billed, not what was billed: left out of equality.
    ingested_after: datetime | None = field(default=None, compare=False)
    ingested_through: datetime | None = field(default=None, compare=False)


@dataclass(frozen=True)
class UsageClose:
    """What a period close bills: usage of the period per meter, and late usage of earlier periods."""

    period_start: datetime
    period_end: datetime
    totals: Mapping[str, Decimal]
    late: tuple[LateAdjustment, ...] = ()

    def late_by_meter(self) -> dict[str, Decimal]:
        out: dict[str, Decimal] = {}
        with localcontext(_EXACT_SUMS):
            for adj in self.late:
                out[adj.meter_id] = out.get(adj.meter_id, Decimal(0)) + adj.quantity
        return out


def _floor_hour(at: datetime) -> datetime:
    at = at.astimezone(UTC)
    return at.replace(minute=0, second=0, microsecond=0)


def _event_sums(conn: sa.Connection, subscription_id: str, lo: datetime, hi: datetime) -> dict[str, Decimal]:
    if lo >= hi:
        return {}
    rows = conn.execute(
        sa.select(usage_events.c.meter_id, sa.func.sum(usage_events.c.quantity))
        .where(usage_events.c.subscription_id == subscription_id, usage_events.c.meter_id.is_not(None),
               usage_events.c.occurred_at >= lo, usage_events.c.occurred_at < hi)
        .group_by(usage_events.c.meter_id)).all()
    return {m: Decimal(q) for m, q in rows}


def close_usage(conn: sa.Connection, subscription_id: str, period_start: datetime,
                period_end: datetime) -> UsageClose:
    """Bill the usage of [period_start, period_end) plus late usage of earlier closed periods.

    Call it inside the period-close transaction (its writes commit or roll back with the invoice). See
    the module docstring for the policy. Idempotent per (subscription_id, period_end).
    """
    return close_usages(conn, [(subscription_id, period_start, period_end)])[subscription_id]


# A billing run closes tens of thousands of subscriptions in one batch: every step below is one statement
# for all of them (arrays unnested server-side), so a close costs a few index probes, not round trips.
_STORED_CLOSES = sa.text("""
SELECT c.* FROM unnest(CAST(:subs AS text[]), CAST(:his AS timestamptz[])) AS v(s, hi)
JOIN usage_closes c ON c.subscription_id = v.s AND c.period_end = v.hi""")
_RAISE_WATERMARKS = sa.text("""
INSERT INTO usage_watermarks (subscription_id, closed_through)
SELECT s, hi FROM unnest(CAST(:subs AS text[]), CAST(:his AS timestamptz[])) AS v(s, hi) ORDER BY s
ON CONFLICT (subscription_id) DO UPDATE
   SET closed_through = greatest(usage_watermarks.closed_through, excluded.closed_through), updated_at = now()""")
# Every bucket a close may bill, locked: usage committed concurrently for them waits until we commit.
_LOCK_BUCKETS = sa.text("""
SELECT a.subscription_id, a.meter_id, a.bucket_start, a.quantity, a.event_count, a.billed_quantity,
       a.billed_events, a.updated_at, a.billed_through
FROM unnest(CAST(:subs AS text[]), CAST(:hbs AS timestamptz[])) AS v(s, hb)
JOIN usage_aggregates a ON a.subscription_id = v.s AND a.bucket_start <= v.hb
                       AND (a.quantity <> a.billed_quantity OR a.bucket_start = v.hb)
ORDER BY a.subscription_id, a.meter_id, a.bucket_start
FOR UPDATE OF a""")
_EDGE_SUMS = sa.text("""
SELECT v.k, e.meter_id, sum(e.quantity) AS quantity
FROM unnest(CAST(:keys AS int[]), CAST(:subs AS text[]), CAST(:los AS timestamptz[]),
            CAST(:his AS timestamptz[])) AS v(k, s, lo, hi)
JOIN usage_events e ON e.subscription_id = v.s AND e.occurred_at >= v.lo AND e.occurred_at < v.hi
WHERE e.meter_id IS NOT NULL
GROUP BY v.k, e.meter_id""")
# NOTE (invoice line -> events): whatever bills a bucket (this close, or late usage billed onto a draft)
# sets billed_through to the bucket's updated_at as locked, and a late bill records the previous and new
# billed_through in usage_closes.late; services/ingest/service_layer/line_events.py reads them back.
_MARK_BILLED = sa.text("""
UPDATE usage_aggregates a SET billed_quantity = v.q, billed_events = v.n, billed_through = v.t
FROM unnest(CAST(:subs AS text[]), CAST(:meters AS text[]), CAST(:buckets AS timestamptz[]),
            CAST(:qs AS numeric[]), CAST(:ns AS bigint[]), CAST(:ts AS timestamptz[])) AS v(s, m, b, q, n, t)
WHERE a.subscription_id = v.s AND a.meter_id = v.m AND a.bucket_start = v.b""")
_STORE_CLOSES = sa.text("""
INSERT INTO usage_closes (subscription_id, period_start, period_end, totals, late)
SELECT s, lo, hi, CAST(t AS jsonb), CAST(l AS jsonb)
FROM unnest(CAST(:subs AS text[]), CAST(:los AS timestamptz[]), CAST(:his AS timestamptz[]),
            CAST(:totals AS text[]), CAST(:lates AS text[])) AS v(s, lo, hi, t, l)""")


@dataclass
class _Edges:
    """The event sums a close needs where its period starts or ends inside an hour bucket."""

    regular_in_lo_bucket: dict[str, Decimal] = field(default_factory=dict)
    billed_in_hi_bucket: dict[str, Decimal] = field(default_factory=dict)
    regular_in_hi_bucket: dict[str, Decimal] = field(default_factory=dict)


def close_usages(conn: sa.Connection, requests: Sequence[tuple[str, datetime, datetime]]) -> dict[str, UsageClose]:
    """``close_usage`` for many subscriptions at once, in a constant number of statements.

    ``requests`` are (subscription_id, period_start, period_end), one per subscription; the answer maps each
    subscription_id to exactly what ``close_usage`` would return for it (same policy, same idempotency).
    """
    spans: dict[str, tuple[datetime, datetime]] = {}
    for sub, start, end in requests:
        lo, hi = start.astimezone(UTC), end.astimezone(UTC)
        if lo >= hi:
            raise ValueError(f"empty period [{lo}, {hi})")
        if sub in spans:
            raise ValueError(f"subscription {sub} appears twice in one usage close")
        spans[sub] = (lo, hi)
    if not spans:
        return {}
    out: dict[str, UsageClose] = {}
    subs = sorted(spans)
    for row in conn.execute(_STORED_CLOSES, {"subs": text_array(subs),
                                             "his": instant_array(spans[s][1] for s in subs)}):
        out[row.subscription_id] = _from_stored(row)
    todo = [s for s in subs if s not in out]
    if not todo:
        return out
    # Serialises closes of one subscription and records the watermark.
    conn.execute(_RAISE_WATERMARKS, {"subs": text_array(todo), "his": instant_array(spans[s][1] for s in todo)})
    locked: dict[str, list[Any]] = {}
    for r in conn.execute(_LOCK_BUCKETS, {"subs": text_array(todo),
                                          "hbs": instant_array(_floor_hour(spans[s][1]) for s in todo)}):
        locked.setdefault(r.subscription_id, []).append(r)
    edges = _edge_sums(conn, {s: spans[s] for s in todo})

    updates: list[tuple[str, str, datetime, Decimal, int, datetime]] = []
    stored: list[tuple[str, datetime, datetime, str, str]] = []
    for sub in todo:
        lo, hi = spans[sub]
        with localcontext(_EXACT_SUMS):
            result = _close_one(sub, lo, hi, locked.get(sub, ()), edges.get(sub) or _Edges(), updates)
        out[sub] = result
        stored.append((sub, lo, hi, orjson.dumps({m: str(q) for m, q in result.totals.items()}).decode(),
                       orjson.dumps([{"meter_id": a.meter_id, "bucket_start": a.bucket_start.isoformat(),
                                      "quantity": str(a.quantity),
                                      "ingested_after": _iso(a.ingested_after),
                                      "ingested_through": _iso(a.ingested_through)}
                                     for a in result.late]).decode()))
    if updates:
        conn.execute(_MARK_BILLED, {"subs": text_array(u[0] for u in updates),
                                    "meters": text_array(u[1] for u in updates),
                                    "buckets": instant_array(u[2] for u in updates),
                                    "qs": number_array(u[3] for u in updates),
                                    "ns": number_array(u[4] for u in updates),
                                    "ts": instant_array(u[5] for u in updates)})
    conn.execute(_STORE_CLOSES, {"subs": text_array(r[0] for r in stored),
                                 "los": instant_array(r[1] for r in stored),
                                 "his": instant_array(r[2] for r in stored),
                                 "totals": text_array(r[3] for r in stored), "lates": text_array(r[4] for r in stored)})
    return out


def _edge_sums(conn: sa.Connection, spans: Mapping[str, tuple[datetime, datetime]]) -> dict[str, _Edges]:
    """Event sums of the partial hours at the edges of the periods that need them, in one query."""
    ranges: list[tuple[str, str, datetime, datetime]] = []  # (subscription, which edge sum, lo, hi)
    for sub, (lo, hi) in spans.items():
        lo_bucket, hi_bucket = _floor_hour(lo), _floor_hour(hi)
        if lo != lo_bucket:
            ranges.append((sub, "regular_in_lo_bucket", lo, min(lo_bucket + BUCKET, hi)))
        if hi != hi_bucket:
            ranges.append((sub, "billed_in_hi_bucket", hi_bucket, hi))
            ranges.append((sub, "regular_in_hi_bucket", max(lo, hi_bucket), hi))
    if not ranges:
        return {}
    found = conn.execute(_EDGE_SUMS, {"keys": number_array(range(len(ranges))),
                                      "subs": text_array(r[0] for r in ranges),
                                      "los": instant_array(r[2] for r in ranges),
                                      "his": instant_array(r[3] for r in ranges)}).all()
    out: dict[str, _Edges] = {}
    for sub, _, _, _ in ranges:
        out.setdefault(sub, _Edges())
    for key, meter, quantity in found:
        sub, which, _, _ = ranges[key]
        getattr(out[sub], which)[meter] = Decimal(quantity)
    return out


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def _close_one(sub: str, lo: datetime, hi: datetime, locked: Iterable[Any], edges: _Edges,
               updates: list[tuple[str, str, datetime, Decimal, int, datetime]]) -> UsageClose:
    """One subscription's close from its locked buckets (see the module docstring's policy); appends the
    billed marks to write to `updates`."""
    hi_bucket, lo_bucket = _floor_hour(hi), _floor_hour(lo)
    partial_hi = hi != hi_bucket
    totals: dict[str, Decimal] = {}
    late: list[LateAdjustment] = []
    for r in locked:
        meter, start = r.meter_id, r.bucket_start.astimezone(UTC)
        if start == hi_bucket:
            if not partial_hi:
                continue  # the bucket starts at period_end: next period
            new_billed = edges.billed_in_hi_bucket.get(meter, Decimal(0))
            regular = edges.regular_in_hi_bucket.get(meter, Decimal(0))
            # NOTE: billed_events of a partial bucket stays an upper bound until the bucket is whole.
            new_events = r.billed_events
        else:
            new_billed = Decimal(r.quantity)
            new_events = r.event_count
            if start >= lo:
                regular = new_billed - Decimal(r.billed_quantity)
            elif start == lo_bucket:
                regular = edges.regular_in_lo_bucket.get(meter, Decimal(0))
            else:
                regular = Decimal(0)
        increment = new_billed - Decimal(r.billed_quantity)
        if increment == 0 and regular == 0:
            continue
        if regular:
            totals[meter] = totals.get(meter, Decimal(0)) + regular
        if increment - regular:
            late.append(LateAdjustment(meter, start, increment - regular, r.billed_through, r.updated_at))
        updates.append((sub, meter, r.bucket_start, new_billed, new_events, r.updated_at))
    return UsageClose(lo, hi, totals, tuple(late))


def _from_stored(row: Any) -> UsageClose:
    return UsageClose(row.period_start.astimezone(UTC), row.period_end.astimezone(UTC),
                      {m: Decimal(q) for m, q in row.totals.items()},
                      tuple(LateAdjustment(a["meter_id"], datetime.fromisoformat(a["bucket_start"]),
                                           Decimal(a["quantity"]), _instant(a.get("ingested_after")),
                                           _instant(a.get("ingested_through"))) for a in row.late))


def _instant(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)

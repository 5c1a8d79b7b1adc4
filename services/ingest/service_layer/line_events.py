"""Invoice line -> the usage events it billed (read side).

A usage line of a period close billed, for its meter, the events with a timestamp in the closed period
that were stored when the period was closed; events of that period stored later were billed by a later
close as its late-usage adjustment line. Which close billed which event is recorded per hour bucket, not
per event (the billing run stays set-based): a close sets the bucket's `billed_through` to the newest
`ingested_at` it billed, and a late bill records the bucket's previous and new `billed_through` in
`usage_closes.late` (`services/billing_worker/adapters/usage_close.py`). So:

- usage line of the close ending at `hi`, period [lo, hi): the meter's events with lo <= occurred_at < hi,
  ingested_at <= the bucket's billed_through, and not inside a late range a later close billed;
- adjustment line with a meter of the close ending at `hi`: the events of each late bucket it billed with
  ingested_after < ingested_at <= ingested_through and occurred_at before the close's period start.

Each event's `quantity` is the meter quantity stored at ingest (1 per event for counting meters, the value
property for summing ones), so the listed quantities sum to the metered quantity of the line. When the
plan's included credit is in units, the line's `quantity` is what remained billable after the covered
units (the line's description says how many were covered).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from services.ingest.service_layer.refusals import LineNotTraceable
from shared.adapters.postgres.schema.billing import invoice_lines, invoices

TRACEABLE_KINDS = ("usage", "adjustment")
CSV_COLUMNS = ("transaction_id", "customer_id", "event_type", "meter_id", "quantity", "occurred_at",
               "received_at", "ingested_at")


@dataclass(frozen=True, slots=True)
class LineEvent:
    transaction_id: str
    customer_id: str
    event_type: str
    meter_id: str
    quantity: Decimal
    occurred_at: datetime
    received_at: datetime
    ingested_at: datetime


@dataclass(frozen=True, slots=True)
class TracedLine:
    """What a traceable line billed: its subscription, meter, kind and the close's period."""

    invoice_id: str
    customer_id: str
    subscription_id: str
    line_no: int
    kind: str
    meter_id: str
    period_start: datetime
    period_end: datetime


_LATER_RANGES = """
SELECT l.bucket_start, l.ingested_after, l.ingested_through
FROM usage_closes c CROSS JOIN LATERAL jsonb_to_recordset(c.late)
     AS l(meter_id text, bucket_start timestamptz, ingested_after timestamptz, ingested_through timestamptz)
WHERE c.subscription_id = :s AND l.meter_id = :m AND l.ingested_through IS NOT NULL"""

_USAGE_EVENTS = sa.text(f"""
WITH later AS ({_LATER_RANGES} AND c.period_end > :hi)
SELECT e.transaction_id, e.customer_id, e.event_type, e.meter_id, e.quantity, e.occurred_at, e.received_at,
       e.ingested_at
FROM usage_events e
JOIN usage_aggregates a ON a.subscription_id = e.subscription_id AND a.meter_id = e.meter_id
                       AND a.bucket_start = date_trunc('hour', e.occurred_at, 'UTC')
WHERE e.subscription_id = :s AND e.meter_id = :m AND e.occurred_at >= :lo AND e.occurred_at < :hi
  AND e.ingested_at <= a.billed_through
  AND NOT EXISTS (SELECT 1 FROM later WHERE later.bucket_start = a.bucket_start
                  AND e.ingested_at > coalesce(later.ingested_after, '-infinity')
                  AND e.ingested_at <= later.ingested_through)
  AND (e.occurred_at, e.transaction_id) > (:after_at, :after_tx)
ORDER BY e.occurred_at, e.transaction_id
LIMIT :n""")

_LATE_EVENTS = sa.text(f"""
WITH billed AS ({_LATER_RANGES} AND c.period_end = :hi)
SELECT e.transaction_id, e.customer_id, e.event_type, e.meter_id, e.quantity, e.occurred_at, e.received_at,
       e.ingested_at
FROM billed
JOIN usage_events e ON e.subscription_id = :s AND e.meter_id = :m
                   AND e.occurred_at >= billed.bucket_start AND e.occurred_at < billed.bucket_start + interval '1 hour'
WHERE e.occurred_at < :lo
  AND e.ingested_at > coalesce(billed.ingested_after, '-infinity') AND e.ingested_at <= billed.ingested_through
  AND (e.occurred_at, e.transaction_id) > (:after_at, :after_tx)
ORDER BY e.occurred_at, e.transaction_id
LIMIT :n""")

_CLOSE_START = sa.text("SELECT period_start FROM usage_closes WHERE subscription_id = :s AND period_end = :hi")
_BEGINNING = datetime.fromisoformat("0001-01-01T00:00:00+00:00")


def traced_line(engine: sa.Engine, invoice_id: str, line_no: int) -> TracedLine | None:
    """The line, None when the invoice or the line does not exist; LineNotTraceable when the line bills
    no usage events (a fee, a credit, a discount, tax, an adjustment without a meter)."""
    i, ln = invoices.c, invoice_lines.c
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(i.invoice_id, i.customer_id, i.subscription_id, i.period_start, i.period_end, ln.line_no,
                      ln.kind, ln.meter_id, ln.period_start.label("line_start"), ln.period_end.label("line_end"))
            .select_from(invoices.join(invoice_lines, ln.invoice_id == i.invoice_id))
            .where(i.invoice_id == invoice_id, ln.line_no == line_no)).one_or_none()
    if row is None:
        return None
    if row.kind not in TRACEABLE_KINDS or row.meter_id is None:
        raise LineNotTraceable(f"line {line_no} of invoice {invoice_id} is a {row.kind} line: it bills no usage "
                               "events (only usage lines and late-usage adjustments do)")
    # NOTE: a usage line bills the close of its own period: the invoice's, except a trial's usage billed on
    # the start invoice of the first paid period (its line carries the trial window, a close of its own).
    start, end = ((row.line_start, row.line_end) if row.kind == "usage" and row.line_start is not None
                  and row.line_end is not None else (row.period_start, row.period_end))
    return TracedLine(row.invoice_id, row.customer_id, row.subscription_id, row.line_no, row.kind, row.meter_id,
                      start, end)


def invoice_owner(engine: sa.Engine, invoice_id: str) -> str | None:
    """The customer of an invoice, None when it does not exist."""
    with engine.connect() as conn:
        owner: str | None = conn.execute(sa.select(invoices.c.customer_id)
                                         .where(invoices.c.invoice_id == invoice_id)).scalar_one_or_none()
    return owner


def parse_key(key: str | None) -> tuple[datetime, str] | None:
    """A page key (`occurred_at|transaction_id`) back; ValueError when it is not one."""
    if key is None:
        return None
    at, sep, tx = key.partition("|")
    if not sep:
        raise ValueError("not a line-event key")
    return datetime.fromisoformat(at), tx


def _key(event: LineEvent) -> str:
    return f"{event.occurred_at.isoformat()}|{event.transaction_id}"


def _fetch(conn: sa.Connection, line: TracedLine, after: tuple[datetime, str] | None, limit: int) -> list[LineEvent]:
    after_at, after_tx = after if after is not None else (_BEGINNING, "")
    params: dict[str, Any] = {"s": line.subscription_id, "m": line.meter_id, "hi": line.period_end,
                              "after_at": after_at, "after_tx": after_tx, "n": limit}
    if line.kind == "usage":
        rows = conn.execute(_USAGE_EVENTS, {**params, "lo": line.period_start})
    else:
        # The close's own period start (the invoice's period for a period close).
        lo = conn.execute(_CLOSE_START, {"s": line.subscription_id, "hi": line.period_end}).scalar_one_or_none()
        if lo is None:
            return []
        rows = conn.execute(_LATE_EVENTS, {**params, "lo": lo})
    return [LineEvent(r.transaction_id, r.customer_id, r.event_type, r.meter_id, Decimal(r.quantity),
                      r.occurred_at, r.received_at, r.ingested_at) for r in rows]


def line_events(engine: sa.Engine, line: TracedLine, after: tuple[datetime, str] | None,
                limit: int) -> tuple[list[LineEvent], str | None]:
    """One keyset page (by occurred_at, then transaction_id) of the events the line billed, and the key to
    continue after when more follow."""
    with engine.connect() as conn:
        events = _fetch(conn, line, after, limit + 1)
    more = len(events) > limit
    events = events[:limit]
    return events, _key(events[-1]) if more and events else None


def all_line_events(engine: sa.Engine, line: TracedLine, chunk: int = 5000) -> Iterator[LineEvent]:
    """Every event of the line, read in keyset chunks (for the CSV stream: memory bounded by one chunk)."""
    after: tuple[datetime, str] | None = None
    while True:
        with engine.connect() as conn:
            events = _fetch(conn, line, after, chunk)
        yield from events
        if len(events) < chunk:
            return
        after = (events[-1].occurred_at, events[-1].transaction_id)

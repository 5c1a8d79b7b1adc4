"""Invoice line -> the usage events it billed: a page of JSON, or every event as CSV.

The query is the read side's (`services.ingest.service_layer.line_events`); the route authorises, pages and
encodes."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.responses import Response, StreamingResponse

from services.ingest.auth import Principal, Scope, authorize_customer, require
from services.ingest.container import Container, get_container
from services.ingest.ids import PathId
from services.ingest.pagination import Page, decode_cursor, encode_cursor, invalid_cursor
from services.ingest.problems import PROBLEM_JSON, PROBLEM_RESPONSES, Problem, ProblemError
from services.ingest.service_layer import line_events

router = APIRouter(tags=["reads"])
CSV = "text/csv"


class LineEventView(BaseModel):
    """One usage event billed by the line. `quantity` is the meter quantity stored at ingest (1 per event
    for counting meters): the quantities of all the line's events sum to its metered quantity."""

    transaction_id: str
    customer_id: str
    event_type: str
    meter_id: str
    quantity: Decimal
    occurred_at: datetime
    received_at: datetime
    ingested_at: datetime


def _wants_csv(request: Request, format: str | None) -> bool:
    if format is not None:
        return format == "csv"
    accept = (request.headers.get("accept") or "").lower()
    return any(part.split(";")[0].strip() == CSV for part in accept.split(","))


def _csv_rows(events: Iterator[line_events.LineEvent]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(line_events.CSV_COLUMNS)
    for count, e in enumerate(events, 1):
        writer.writerow((e.transaction_id, e.customer_id, e.event_type, e.meter_id, e.quantity,
                         e.occurred_at.isoformat(), e.received_at.isoformat(), e.ingested_at.isoformat()))
        if count % 500 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


@router.get(
    "/v1/invoices/{invoice_id}/lines/{line_no}/events",
    response_model=Page[LineEventView],
    summary="The usage events an invoice line billed (JSON pages, or CSV)",
    responses={
        200: {"description": "A page of events by (occurred_at, transaction_id); with `?format=csv` or "
                             "`Accept: text/csv`, every event as CSV with a header row",
              "content": {CSV: {"schema": {"type": "string"}}}},
        404: {"model": Problem, "description": "Unknown invoice or line", "content": {PROBLEM_JSON: {}}},
        409: {"model": Problem, "description": "The line bills no usage events (`line_not_traceable`): only "
                                               "usage lines and late-usage adjustments do",
              "content": {PROBLEM_JSON: {}}},
        **PROBLEM_RESPONSES,
    },
)
async def invoice_line_events(
    request: Request, invoice_id: PathId, line_no: int = Path(ge=1, le=32767),
    limit: int = Query(50, ge=1, le=500), cursor: str | None = None,
    format: str | None = Query(None, pattern="^(json|csv)$",
                               description="`csv` for every event as CSV; when absent, `Accept` decides"),
    principal: Principal = Depends(require(Scope.READ)),
    container: Container = Depends(get_container),
) -> Response | Page[LineEventView]:
    """A usage line lists the events with a timestamp in its period that its close billed; a late-usage
    adjustment lists the late events its close billed (events of earlier periods that arrived after them)."""
    owner = await run_in_threadpool(line_events.invoice_owner, container.engine, invoice_id)
    if owner is None:
        raise ProblemError(404, "Unknown invoice", f"no invoice {invoice_id!r}", slug="not-found")
    authorize_customer(principal, owner)
    line = await run_in_threadpool(line_events.traced_line, container.engine, invoice_id, line_no)
    if line is None:
        raise ProblemError(404, "Unknown invoice line", f"invoice {invoice_id!r} has no line {line_no}",
                           slug="not-found")
    if _wants_csv(request, format):
        rows = _csv_rows(line_events.all_line_events(container.engine, line))
        return StreamingResponse(iterate_in_threadpool(rows), media_type=f"{CSV}; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="{invoice_id}-line-{line_no}-events.csv"'})
    try:
        after = line_events.parse_key(decode_cursor(cursor))
    except ValueError as exc:
        raise invalid_cursor() from exc
    events, nxt = await run_in_threadpool(line_events.line_events, container.engine, line, after, limit)
    return Page(data=[LineEventView(**_fields(e)) for e in events],
                next_cursor=encode_cursor(nxt) if nxt is not None else None)


def _fields(e: line_events.LineEvent) -> dict[str, object]:
    return {name: getattr(e, name) for name in LineEventView.model_fields}

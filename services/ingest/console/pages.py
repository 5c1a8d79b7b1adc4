"""The operator console's pages under `/console`: server-rendered HTML (Jinja templates, htmx vendored as a
static file), for admin API keys. A login form takes the key and sets a signed session cookie (HttpOnly,
SameSite=Strict, expiring); every form carries the session's CSRF token. Pages only read (the queries are
`services.ingest.service_layer.console_reads` and `views`); actions are in `services.ingest.console.actions`
and call the same use cases as the API.

The console is a user interface, not an API: its routes are left out of the OpenAPI document.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse, RedirectResponse, Response

from services.ingest.console import actions, charts
from services.ingest.console.session import COOKIE_NAME, ConsoleSession
from services.ingest.console.web import (
    PREFIX,
    STATIC,
    ConsoleError,
    ConsoleRoute,
    badge,
    console_session,
    container_of,
    link,
    money,
    page,
    pdf_link,
    principal_of,
    require_csrf,
    retry_link,
    signer_of,
    svg,
    when,
)
from services.ingest.pagination import decode_cursor, decode_int_cursor, encode_cursor
from services.ingest.problems import ProblemError
from services.ingest.routes import documents, reads
from services.ingest.routes import previews as previews_routes
from services.ingest.routes.documents import DocumentFormat
from services.ingest.service_layer import console_reads, credit_notes, credits, customer_balance, views
from services.ingest.views import SubscriptionView
from shared.domain.money import minor_units
from shared.errors import BillingError

router = APIRouter(prefix=PREFIX, include_in_schema=False, route_class=ConsoleRoute)
router.include_router(actions.router)
STATIC_FILES = {"htmx.min.js": "text/javascript", "htmx.LICENSE.txt": "text/plain", "console.css": "text/css"}
PAGE_SIZE = 50
MONTH = re.compile(r"\d{4}-(0[1-9]|1[0-2])")


def _safe_next(target: str | None) -> str:
    """Only a console path (never another site) after logging in."""
    if target and target.startswith(f"{PREFIX}/") and not target.startswith("//") and "\\" not in target:
        return target
    return PREFIX + "/"


@router.get("/static/{name}")
async def static(name: str) -> Response:
    media = STATIC_FILES.get(name)
    if media is None:
        return Response(status_code=404)
    return FileResponse(STATIC / name, media_type=media, headers={"Cache-Control": "public, max-age=3600"})


@router.get("/login")
async def login_form(request: Request, next: str | None = None) -> Response:
    return page(request, "login.html", None, next=_safe_next(next), failed=False)


@router.post("/login")
async def login(request: Request, api_key: str = Form(""), next: str | None = Form(None)) -> Response:
    authenticator = request.app.state.authenticator
    principal = await run_in_threadpool(authenticator.authenticate, api_key.strip()) if api_key.strip() else None
    if principal is None or not principal.is_admin:
        return page(request, "login.html", None, next=_safe_next(next), failed=True, status_code=401)
    signer = signer_of(request)
    cookie, _ = signer.issue(principal.key_id)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(COOKIE_NAME, cookie, max_age=signer.lifetime_seconds, path=PREFIX, httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
    return response


@router.post("/logout")
async def logout(request: Request, csrf: str = Form(""),
                 session: ConsoleSession = Depends(console_session)) -> Response:
    require_csrf(request, session, csrf)
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(COOKIE_NAME, path=PREFIX)
    return response


@router.get("/")
async def overview(request: Request, currency: str | None = None,
                   session: ConsoleSession = Depends(console_session)) -> Response:
    container = container_of(request)
    now = await run_in_threadpool(container.clock.now)
    data = await run_in_threadpool(console_reads.overview, container.engine)
    chosen = next((c for c in data.by_currency if c.currency == currency), None) or \
        (data.by_currency[0] if data.by_currency else None)
    revenue_chart, revenue_rows = None, []
    if chosen is not None and chosen.months:
        minor = 10 ** minor_units(chosen.currency)
        revenue_chart = svg(charts.bar_chart(
            [m.month for m in chosen.months],
            [charts.Series("invoiced", [m.invoiced_minor / minor for m in chosen.months]),
             charts.Series("collected", [m.collected_minor / minor for m in chosen.months]),
             charts.Series("written off", [m.written_off_minor / minor for m in chosen.months])],
            title=f"Revenue by month ({chosen.currency})"))
        revenue_rows = [[m.month, money(m.invoiced_minor, chosen.currency), money(m.collected_minor, chosen.currency),
                         money(m.written_off_minor, chosen.currency)] for m in reversed(chosen.months)]
    return page(request, "overview.html", session, now=now, data=data, chosen=chosen,
                revenue_chart=revenue_chart, revenue_rows=revenue_rows)


@router.get("/overview/usage")
async def overview_usage(request: Request, session: ConsoleSession = Depends(console_session)) -> Response:
    """The overview's usage chart: loaded by htmx after the page (its scan is the overview's one slow read);
    without htmx, the link opens it as a page of its own."""
    container = container_of(request)
    now = await run_in_threadpool(container.clock.now)
    days = await run_in_threadpool(console_reads.usage_per_day, container.engine, now.astimezone(UTC).date())
    usage_chart = svg(charts.line_chart(
        [d.strftime("%m-%d") for d, _ in days], [charts.Series("usage events", [float(n) for _, n in days])],
        title=f"Usage events per day, last {len(days)} days"))
    fragment = request.headers.get("hx-request") == "true" and request.headers.get("hx-boosted") != "true"
    return page(request, "overview_usage.html", session, usage_chart=usage_chart, fragment=fragment)


@router.get("/customers")
async def customers(request: Request, q: str | None = Query(None, max_length=200), cursor: str | None = None,
                    session: ConsoleSession = Depends(console_session)) -> Response:
    container = container_of(request)
    rows, nxt = await run_in_threadpool(console_reads.find_customers, container.engine, q, decode_cursor(cursor),
                                        PAGE_SIZE)
    cells = [[link(f"/customers/{quote(c.customer_id)}", c.customer_id), c.external_id, c.name, c.email, c.kind,
              c.currency, when(c.created_at)] for c in rows]
    return page(request, "customers.html", session, q=q or "", cells=cells,
                next_cursor=encode_cursor(nxt) if nxt is not None else None)


def _invoice_cells(rows: list[console_reads.InvoiceRow], *, with_customer: bool) -> list[list[object]]:
    cells: list[list[object]] = []
    for r in rows:
        row: list[object] = [link(f"/invoices/{quote(r.invoice_id)}", r.number or r.invoice_id), badge(r.status),
                             r.kind]
        if with_customer:
            row.append(link(f"/customers/{quote(r.customer_id)}", r.customer_id))
        row += [f"{when(r.period_start)} → {when(r.period_end)}", money(r.total_minor, r.currency),
                money(r.owed_minor, r.currency) if r.status in ("open", "uncollectible") else "",
                when(r.issued_at)]
        if not with_customer:  # the customer page: each final invoice's PDF at hand, and its payment retry
            row.append(pdf_link(r.invoice_id) if r.number else "")
            row.append(retry_link(r.invoice_id) if r.status in ("open", "uncollectible") else "")
        cells.append(row)
    return cells


INVOICE_HEADERS = ["Invoice", "Status", "Kind", "Period", "Total", "Owed", "Finalised"]


@router.get("/customers/{customer_id}")
async def customer(request: Request, customer_id: str, session: ConsoleSession = Depends(console_session)) -> Response:
    container = container_of(request)
    engine = container.engine
    detail = await run_in_threadpool(console_reads.customer_detail, engine, customer_id)
    if detail is None:
        raise ConsoleError(404, "Unknown customer", f"no customer {customer_id!r}", "not_found")
    now = await run_in_threadpool(container.clock.now)

    def read() -> tuple[Any, ...]:
        subs, _ = views.subscriptions_of(engine, customer_id, None, 20)
        invoices, more = console_reads.invoice_page(engine, customer_id=customer_id, limit=20)
        payments = console_reads.recent_payments(engine, customer_id)
        return (subs, invoices, more, payments, customer_balance.balances_of(engine, customer_id),
                credits.credits_of_customer(engine, customer_id, now))

    subs, invoices, more, payments, balances, meter_credits = await run_in_threadpool(read)
    sub_cells = [[link(f"/subscriptions/{quote(s.subscription_id)}", s.subscription_id), s.plan_id, badge(s.status),
                  s.seats, f"{when(s.current_period_start)} → {when(s.current_period_end)}",
                  _scheduled_text(s)] for s in subs]
    payment_cells = [[link(f"/invoices/{quote(p.invoice_id)}", p.invoice_id), p.attempt_no, badge(p.status), p.reason,
                      money(p.amount_minor, p.currency), p.decline_code or "", when(p.requested_at),
                      when(p.completed_at)] for p in payments]
    return page(request, "customer.html", session, now=now, c=detail.customer, detail=detail, subs=sub_cells,
                live=[s for s in subs if s.status != "cancelled"],
                invoices=_invoice_cells(invoices, with_customer=False), more_invoices=more is not None,
                payments=payment_cells, balances=balances.balances, meter_credits=meter_credits.meters,
                invoice_headers=[*INVOICE_HEADERS, "Document", "Payment"])


def _scheduled_text(s: SubscriptionView) -> str:
    parts = []
    if s.pending_plan_id:
        parts.append(f"plan → {s.pending_plan_id} at the period end")
    if s.pending_seats is not None:
        parts.append(f"seats → {s.pending_seats} at the period end")
    if s.cancel_at_period_end:
        parts.append("cancels at the period end")
    return "; ".join(parts)


@router.get("/subscriptions/{subscription_id}")
async def subscription(request: Request, subscription_id: str,
                       session: ConsoleSession = Depends(console_session)) -> Response:
    container = container_of(request)
    sub = await run_in_threadpool(views.subscription, container.engine, subscription_id)
    if sub is None:
        raise ConsoleError(404, "Unknown subscription", f"no subscription {subscription_id!r}", "not_found")
    principal = principal_of(session)
    detail = await run_in_threadpool(console_reads.subscription_detail, container.engine, subscription_id,
                                     sub.current_period_start, sub.current_period_end)
    usage = upcoming = None
    unavailable: list[str] = []
    if sub.status != "cancelled":  # the API's own reads (same code, same answers)
        try:
            usage = await reads.usage_so_far(subscription_id, principal, container)
            upcoming = await previews_routes.upcoming_invoice(subscription_id, principal, container)
        except (ProblemError, BillingError) as exc:  # shown on the page; the rest of it still answers
            unavailable.append(str(exc))
    days = period_days(sub.current_period_start, sub.current_period_end)
    today = (await run_in_threadpool(container.clock.now)).astimezone(UTC).date()
    usage_charts = [(meter, svg(charts.line_chart(  # a point for each day so far; the days to come have none
        [d.strftime("%m-%d") for d in days],
        [charts.Series(meter, [float(by_day.get(d, 0)) if d <= today else None for d in days])],
        title=f"{meter} per day, current period"))) for meter, by_day in sorted(detail.usage_by_day.items())]
    return page(request, "subscription.html", session, sub=sub, detail=detail, usage=usage, upcoming=upcoming,
                usage_charts=usage_charts, scheduled=_scheduled_text(sub), unavailable=unavailable)


def period_days(start: datetime, end: datetime) -> list[date]:
    """The UTC days a period touches, [start, end)."""
    first, last = start.astimezone(UTC).date(), (end.astimezone(UTC) - timedelta(microseconds=1)).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _keyset(cursor: str | None) -> str | None:
    """A list's `instant|id` cursor; a forged or damaged one is refused (422), never a 500."""
    key = decode_cursor(cursor)
    if key is not None:
        instant, sep, ident = key.partition("|")
        try:
            datetime.fromisoformat(instant)
        except ValueError:
            ident = ""
        if not sep or not ident:
            raise ConsoleError(422, "Invalid cursor", "follow the page's own Next link", "cursor")
    return key


@router.get("/invoices")
async def invoice_list(request: Request, status: str | None = Query(None), month: str | None = Query(None),
                       customer: str | None = Query(None), cursor: str | None = None,
                       session: ConsoleSession = Depends(console_session)) -> Response:
    status = status or None
    customer = customer or None
    month = month or None
    if status is not None and status not in console_reads.INVOICE_STATUSES:
        raise ConsoleError(422, "Unknown status", f"status is one of {', '.join(console_reads.INVOICE_STATUSES)}",
                           "validation")
    if month is not None and not MONTH.fullmatch(month):
        raise ConsoleError(422, "Invalid month", "month is YYYY-MM", "validation")
    container = container_of(request)
    rows, nxt = await run_in_threadpool(partial(console_reads.invoice_page, container.engine, customer_id=customer,
                                                status=status, month=month, after=_keyset(cursor),
                                                limit=PAGE_SIZE))
    query = urlencode({k: v for k, v in (("status", status), ("month", month), ("customer", customer)) if v})
    return page(request, "invoices.html", session, status=status or "", month=month or "", customer=customer or "",
                statuses=console_reads.INVOICE_STATUSES, cells=_invoice_cells(rows, with_customer=True),
                headers=[*INVOICE_HEADERS[:3], "Customer", *INVOICE_HEADERS[3:]],
                next_cursor=encode_cursor(nxt) if nxt is not None else None, query=query)


@router.get("/invoices/{invoice_id}")
async def invoice(request: Request, invoice_id: str, session: ConsoleSession = Depends(console_session)) -> Response:
    container = container_of(request)
    found = await run_in_threadpool(views.invoice, container.engine, invoice_id)
    if found is None:
        raise ConsoleError(404, "Unknown invoice", f"no invoice {invoice_id!r}", "not_found")
    notes = await run_in_threadpool(credit_notes.credit_notes_of_invoice, container.engine, invoice_id)
    return page(request, "invoice.html", session, inv=found, notes=notes,
                voidable=found.status in ("draft", "open", "uncollectible"),
                retryable=found.status in ("open", "uncollectible"),
                creditable=found.status in ("open", "paid", "uncollectible"))


@router.get("/invoices/{invoice_id}/document")
async def invoice_document(request: Request, invoice_id: str, format: DocumentFormat = DocumentFormat.PDF,
                           session: ConsoleSession = Depends(console_session)) -> Response:
    """The invoice's PDF (or HTML) through the API's own document route, as the logged-in admin key."""
    return await documents.invoice_document(request, invoice_id, format, principal_of(session),
                                            container_of(request))


@router.get("/dunning")
async def dunning(request: Request, status: str | None = Query(None), cursor: str | None = None,
                  session: ConsoleSession = Depends(console_session)) -> Response:
    container = container_of(request)
    rows, nxt = await run_in_threadpool(partial(console_reads.dunning_page, container.engine, status=status or None,
                                                after=_keyset(cursor), limit=PAGE_SIZE))
    cells = [[r["case_id"], badge(r["status"]), link(f"/customers/{quote(r['customer_id'])}", r["customer_id"]),
              link(f"/invoices/{quote(r['invoice_id'])}", r["invoice_id"]), money(r["amount_minor"], r["currency"]),
              r["failures"], when(r["opened_at"]), when(r["next_wake_at"]),
              f"{when(r['closed_at'])} {r['closed_reason'] or ''}".strip()] for r in rows]
    return page(request, "dunning.html", session, status=status or "", cells=cells,
                next_cursor=encode_cursor(nxt) if nxt is not None else None)


@router.get("/parked-usage")
async def parked_usage(request: Request, cursor: str | None = None,
                       session: ConsoleSession = Depends(console_session)) -> Response:
    container = container_of(request)
    rows, nxt = await run_in_threadpool(partial(console_reads.parked_usage_page, container.engine,
                                                after=decode_int_cursor(cursor), limit=PAGE_SIZE))
    cells = [[r["id"], r["customer_ref"], r["transaction_id"], r["event"].get("event_type", ""),
              r["event"].get("timestamp", ""), r["submitted_by"], when(r["created_at"])] for r in rows]
    return page(request, "parked.html", session, cells=cells,
                next_cursor=encode_cursor(str(nxt)) if nxt is not None else None)

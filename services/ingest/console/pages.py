"""The operator console's pages under `/console`: server-rendered HTML (Jinja templates, htmx vendored as a
static file), for admin API keys. A login form takes the key and sets a signed session cookie (HttpOnly,
SameSite=Strict, expiring); every form carries the session's CSRF token. Pages only read (the queries are
`services.ingest.service_layer.console_reads` and `views`); actions are in `services.ingest.console.actions`
and call the same use cases as the API.

The console is a user interface, not an API: its routes are left out of the OpenAPI document.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse, RedirectResponse, Response

from services.ingest.console import charts
from services.ingest.console.session import COOKIE_NAME, ConsoleSession
from services.ingest.console.web import (
    PREFIX,
    STATIC,
    ConsoleRoute,
    console_session,
    container_of,
    link,
    money,
    page,
    require_csrf,
    signer_of,
    svg,
    when,
)
from services.ingest.pagination import decode_cursor, encode_cursor
from services.ingest.service_layer import console_reads
from shared.domain.money import minor_units

router = APIRouter(prefix=PREFIX, include_in_schema=False, route_class=ConsoleRoute)
STATIC_FILES = {"htmx.min.js": "text/javascript", "htmx.LICENSE.txt": "text/plain", "console.css": "text/css"}
PAGE_SIZE = 50


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
    data = await run_in_threadpool(console_reads.overview, container.engine, now.date())
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
    usage_chart = svg(charts.line_chart(
        [d.strftime("%m-%d") for d, _ in data.usage_days],
        [charts.Series("usage events", [float(n) for _, n in data.usage_days])],
        title=f"Usage events per day, last {len(data.usage_days)} days"))
    return page(request, "overview.html", session, now=now, data=data, chosen=chosen,
                revenue_chart=revenue_chart, revenue_rows=revenue_rows, usage_chart=usage_chart)


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

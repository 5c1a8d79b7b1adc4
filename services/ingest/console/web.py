"""What every console page shares: templates and their filters, the session dependency, CSRF checks, and a
route class that turns "not logged in" into a redirect to the login form and a use case's refusal into a
page saying why (the API answers the same refusals as problem+json).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from services.ingest.auth import BOOTSTRAP_ADMIN_KEY_ID, Principal, Scope
from services.ingest.console.session import COOKIE_NAME, ConsoleSession, SessionSigner
from services.ingest.container import Container
from services.ingest.problems import ProblemError, use_case_problem
from services.ingest.service_layer import console_reads
from services.tables import cell
from shared.domain.money import Money
from shared.errors import BillingError

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
PREFIX = "/console"
# Console pages hold account data and confirmation buttons: never cached, never framed by another site
# (a framed "confirm" button is clickjacking), no referrer to other sites.
PAGE_HEADERS = {"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                "Content-Security-Policy": "frame-ancestors 'none'", "Referrer-Policy": "same-origin",
                "X-Content-Type-Options": "nosniff"}
# what `?done=` says after an action (fixed texts: nothing from the URL is shown)
DONE = {"voided": "The invoice was voided.", "credited": "The credit note was issued.",
        "cancelled": "The cancellation was applied.", "topped_up": "The credit balance was topped up.",
        "clock_advanced": "The billing clock was advanced.",
        "retried": "The payment retry was requested: the charge follows (see the customer's payments).",
        "pending": "Sent: the billing worker has not answered yet; reload in a moment."}


def money(amount_minor: int | None, currency: str) -> str:
    """`USD 1,234.50`; an empty cell for no amount."""
    return "" if amount_minor is None else Money(int(amount_minor), currency).format()


def when(value: datetime | date | None) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):  # every instant in UTC, whatever the database session's time zone
        return (value.astimezone(UTC) if value.tzinfo else value).strftime("%Y-%m-%d %H:%M") + " UTC"
    return value.isoformat()


def number(value: int | float | Decimal | None) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        value = value.normalize()
        return f"{value:,f}" if value != value.to_integral_value() else f"{int(value):,}"
    return f"{value:,}"


def details(value: Any) -> str:
    """An audit entry's details as words (`invoice id in_1, reason sent by mistake`), not JSON; empty values
    are left out."""
    if isinstance(value, Mapping):
        value = {key: item for key, item in value.items() if item not in (None, "", [], {})}
    return cell(value)


templates = Jinja2Templates(directory=str(HERE / "templates"), autoescape=True)
templates.env.filters.update(money=money, when=when, number=number, details=details)
templates.env.globals.update(prefix=PREFIX)


class LoginRequired(Exception):
    """No valid session: the route class redirects to the login form."""


class ConsoleError(Exception):
    """A refusal to show on an error page (title, detail, machine code)."""

    def __init__(self, status: int, title: str, detail: str | None, code: str | None) -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail, self.code = status, title, detail, code


class ConsoleRoute(APIRoute):
    """Runs a console handler; redirects to the login form without a session, and renders a refusal (a
    use case's `BillingError` or a `ProblemError`) as a page with its status, title, detail and code."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except LoginRequired:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"{PREFIX}/login?next={quote(target)}", status_code=303)
            except ProblemError as exc:
                p = exc.problem
                return _error_page(request, ConsoleError(p.status, p.title, p.detail, p.code or p.type))
            except BillingError as exc:
                answered = use_case_problem(exc)
                if answered is None:
                    raise
                p = answered[0]
                return _error_page(request, ConsoleError(p.status, p.title, p.detail, p.code))
            except ConsoleError as exc:
                return _error_page(request, exc)

        return run


def _error_page(request: Request, error: ConsoleError) -> Response:
    return templates.TemplateResponse(request, "error.html", {"error": error, "session": None},
                                      status_code=error.status, headers=PAGE_HEADERS)


def signer_of(request: Request) -> SessionSigner:
    signer: SessionSigner = request.app.state.console
    return signer


def container_of(request: Request) -> Container:
    container: Container = request.app.state.container
    return container


async def console_session(request: Request) -> ConsoleSession:
    """Dependency: the operator's session (LoginRequired without a valid one, or when its admin key has
    been revoked since: checked on every page, one primary-key read)."""
    session = signer_of(request).verify(request.cookies.get(COOKIE_NAME))
    if session is None:
        raise LoginRequired
    authenticator = request.app.state.authenticator
    if session.key_id != BOOTSTRAP_ADMIN_KEY_ID or not authenticator.admin_token:
        active = await run_in_threadpool(console_reads.admin_key_active, container_of(request).engine,
                                         session.key_id)
        if not active:
            raise LoginRequired
    return session


def principal_of(session: ConsoleSession) -> Principal:
    """The API principal the console's actions run as: the admin key the operator logged in with."""
    return Principal(session.key_id, frozenset({Scope.ADMIN}))


def require_csrf(request: Request, session: ConsoleSession, token: str | None) -> None:
    if not signer_of(request).csrf_valid(session, token):
        raise ConsoleError(403, "Form expired", "the form's CSRF token is not this session's: reload the page "
                           "and submit again", "csrf_mismatch")


def page(request: Request, name: str, session: ConsoleSession | None, *, status_code: int = 200,
         **context: Any) -> Response:
    csrf = signer_of(request).csrf_token(session) if session is not None else ""
    done = DONE.get(request.query_params.get("done", ""))
    return templates.TemplateResponse(request, name, {"session": session, "csrf": csrf, "done": done,
                                                      "idem": secrets.token_urlsafe(16), **context},
                                      status_code=status_code, headers=PAGE_HEADERS)


def svg(markup: str) -> Markup:
    """A chart from `charts` (built from escaped text only) embedded as it is."""
    return Markup(markup)  # noqa: S704 (charts.py escapes every label it writes)


def link(path: str, text: object) -> Markup:
    """An escaped link to a console page (`path` below the prefix, its parts quoted by the caller)."""
    return Markup('<a href="{}{}">{}</a>').format(PREFIX, path, text)


def badge(value: str) -> Markup:
    return Markup('<span class="status status-{0}">{0}</span>').format(value)


def retry_link(invoice_id: str) -> Markup:
    """The confirmation page of an operator's payment retry of the invoice."""
    return Markup('<a class="retry" href="{}/invoices/{}/retry-payment">Retry…</a>').format(
        PREFIX, quote(invoice_id, safe=""))


def pdf_link(invoice_id: str) -> Markup:
    """The invoice's PDF, served by the console through the API's document route (a full page load: the
    browser shows or downloads the PDF, htmx stays out of it)."""
    return Markup('<a class="pdf" href="{}/invoices/{}/document?format=pdf" hx-boost="false" target="_blank">PDF</a>'
                  ).format(PREFIX, quote(invoice_id, safe=""))

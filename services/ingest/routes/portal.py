"""The customer usage portal: an admin hands out a signed, expiring link; the link opens a read-only page of
that customer alone, and the invoice documents it lists.

- `POST /v1/customers/{customer_id}/portal-links` (admin): `{expires_in}` seconds (60 s to 30 days, 24 h by
  default) -> the URL. Audited (`customer.portal_link`).
- `GET /portal/{token}`: the page (HTML). A tampered or malformed link is refused with 403, an expired one
  with 410, both as a page saying so.
- `GET /portal/{token}/invoices/{invoice_id}?format=pdf|html`: one of the link's customer's final invoices;
  any other id (unknown, another customer's, a draft) is 404, the same answer for each.

Links expire on the wall clock (a simulated billing clock may be moved months ahead by an operator); the
page shows the billing clock's "now" (the period and usage it reads are the billing clock's).
The pages are HTML, not part of the JSON API: they are left out of the OpenAPI document, whose errors
are problem+json.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, Response

from services.ingest.auth import Principal, Scope, require
from services.ingest.container import Container, get_container
from services.ingest.ids import PathId
from services.ingest.portal.render import render_page, render_refusal
from services.ingest.problems import PROBLEM_RESPONSES, ProblemError
from services.ingest.routes.documents import DocumentFormat, document_response
from services.ingest.service_layer import portal
from services.ingest.service_layer.spend import SpendService
from shared.domain.portal_link import (
    DEFAULT_LIFETIME,
    MAX_LIFETIME,
    MIN_LIFETIME,
    PortalGrant,
    PortalLinkError,
    PortalLinkExpired,
)

router = APIRouter()

PAGE_HEADERS = {
    "Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Robots-Tag": "noindex",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'self' 'unsafe-inline'; script-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
}


class PortalLinkRequest(BaseModel):
    expires_in: int = Field(default=int(DEFAULT_LIFETIME.total_seconds()), ge=int(MIN_LIFETIME.total_seconds()),
                            le=int(MAX_LIFETIME.total_seconds()),
                            description="seconds the link stays valid (60 to 2,592,000; 24 h by default)")


class PortalLinkView(BaseModel):
    customer_id: str
    url: str = Field(description="the page: anyone holding it reads this customer's usage until `expires_at`")
    token: str
    expires_at: datetime


def _wall_now() -> datetime:
    return datetime.now(UTC)


@router.post("/v1/customers/{customer_id}/portal-links", status_code=201, response_model=PortalLinkView,
             responses=PROBLEM_RESPONSES, tags=["customers"],
             summary="A signed, expiring link to the customer's read-only usage page (admin)")
async def create_portal_link(
        customer_id: PathId, request: Request,
        body: Annotated[PortalLinkRequest | None, Body()] = None,
        principal: Principal = Depends(require(Scope.ADMIN)),
        container: Container = Depends(get_container)) -> PortalLinkView:
    lifetime = timedelta(seconds=(body or PortalLinkRequest()).expires_in)
    link = await run_in_threadpool(
        portal.issue_link, container.engine, principal, customer_id, lifetime,
        container.settings.portal_secret.get_secret_value().encode(), _wall_now(),
        request.headers.get("x-request-id"))
    if link is None:
        raise ProblemError(404, "Unknown customer", f"no customer {customer_id!r}", slug="not-found")
    url = str(request.url_for("portal_page", token=link.token))
    return PortalLinkView(customer_id=customer_id, url=url, token=link.token, expires_at=link.expires_at)


def _refused(status: int, title: str, detail: str) -> HTMLResponse:
    return HTMLResponse(render_refusal(status, title, detail), status_code=status, headers=PAGE_HEADERS)


def _grant(container: Container, token: str) -> PortalGrant | HTMLResponse:
    try:
        return portal.open_link(token, container.settings.portal_secret.get_secret_value().encode(), _wall_now())
    except PortalLinkExpired as error:
        return _refused(410, "This usage link has expired", str(error))
    except PortalLinkError:
        return _refused(403, "This usage link is not valid",
                        "The link was changed or is incomplete: copy the whole link you were given.")


@router.get("/portal/{token}", response_class=HTMLResponse, include_in_schema=False, name="portal_page")
async def portal_page(token: str, request: Request, container: Container = Depends(get_container)) -> Response:
    grant = _grant(container, token)
    if isinstance(grant, HTMLResponse):
        return grant
    now = await run_in_threadpool(container.clock.now)
    spend: SpendService | None = getattr(request.app.state, "spend", None)
    # the two reads are independent: the page's (one connection) and the spend gate's balance
    page, balance = await asyncio.gather(
        run_in_threadpool(portal.load_page, container.engine, grant, now, container.current_catalog),
        portal.spend_of(spend, grant.customer_id))
    if page is None:
        return _refused(404, "No such customer", "The customer this link was made for no longer exists.")
    page = portal.with_spend(page, balance)
    return HTMLResponse(render_page(page, token), headers=PAGE_HEADERS)


@router.get("/portal/{token}/invoices/{invoice_id}", include_in_schema=False)
async def portal_invoice(token: str, invoice_id: PathId, container: Container = Depends(get_container),
                         format: DocumentFormat = Query(DocumentFormat.PDF)) -> Response:
    grant = _grant(container, token)
    if isinstance(grant, HTMLResponse):
        return grant
    document = await run_in_threadpool(portal.invoice_document_for, container.engine, grant, invoice_id,
                                       container.settings.invoice_issuer_name)
    if document is None:
        return _refused(404, "No such invoice", "This link lists its own invoices only.")
    response = await document_response(document, format)
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response

"""Invoice documents for customers: `GET /v1/invoices/{invoice_id}/document` as PDF (default) or HTML.

Authorisation is that of `GET /v1/invoices/{invoice_id}`: scope `read`, and an org-bound key only for its
own org's invoices (404 for an unknown invoice, then 403 for another org's). A draft has no number and may
still change, so it has no document yet (409).
"""

from __future__ import annotations

from enum import StrEnum

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from services.ingest.auth import Principal, Scope, authorize_customer, require
from services.ingest.container import Container, get_container
from services.ingest.ids import PathId
from services.ingest.problems import PROBLEM_JSON, PROBLEM_RESPONSES, Problem, ProblemError
from shared.adapters.documents import InvoiceDocument, load_invoice_document, render_invoice_html, render_invoice_pdf

router = APIRouter(tags=["reads"])

PDF, HTML = "application/pdf", "text/html"
# The HTML page is self-contained (inline styles only): nothing else may load, nothing may run.
HTML_POLICY = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"


class DocumentFormat(StrEnum):
    PDF = "pdf"
    HTML = "html"


MEDIA_TYPES = {DocumentFormat.PDF: PDF, DocumentFormat.HTML: HTML}


def negotiate(accept: str | None) -> DocumentFormat | None:
    """The format an `Accept` header asks for: the supported type with the highest quality, PDF on a tie
    (and when the header is absent or empty); None when it accepts neither (406).

    Each media range is `type/subtype[;q=x]`; `*/*` and `application/*`, `text/*` match by prefix, and a
    more specific range decides over a wildcard for the same type (RFC 9110 section 12.5.1).
    """
    if accept is None or not accept.strip():
        return DocumentFormat.PDF
    quality: dict[DocumentFormat, tuple[int, float]] = {}  # format -> (specificity, q) of the best match
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        media = media.lower()
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 0.0
        for fmt, media_type in MEDIA_TYPES.items():
            kind = media_type.split("/")[0]
            specificity = 2 if media == media_type else 1 if media == f"{kind}/*" else 0 if media == "*/*" else -1
            if specificity >= 0 and specificity >= quality.get(fmt, (-1, 0.0))[0]:
                quality[fmt] = (specificity, q)
    best = max(quality.items(), key=lambda item: (item[1][1], item[0] == DocumentFormat.PDF), default=None)
    return best[0] if best is not None and best[1][1] > 0 else None


def document_format(format: DocumentFormat | None, accept: str | None) -> DocumentFormat:
    """The format asked for: `?format=` when given, else the `Accept` header; 406 when it names neither."""
    chosen = format if format is not None else negotiate(accept)
    if chosen is None:
        raise ProblemError(406, "Not acceptable", "this document is served as application/pdf or text/html "
                           "(or name one with ?format=pdf|html)", slug="not-acceptable")
    return chosen


async def document_response(document: InvoiceDocument, chosen: DocumentFormat) -> Response:
    """The document (an invoice's or a credit note's) rendered as `chosen`, with the headers every document
    is served with (the HTML page under `HTML_POLICY`)."""
    headers = {"Content-Disposition": f'inline; filename="{document.file_stem}.{chosen.value}"',
               "Cache-Control": "private, no-cache", "Vary": "Accept", "X-Content-Type-Options": "nosniff"}
    if chosen is DocumentFormat.PDF:
        return Response(await run_in_threadpool(render_invoice_pdf, document), media_type=PDF, headers=headers)
    headers["Content-Security-Policy"] = HTML_POLICY
    return Response(render_invoice_html(document), media_type=HTML, headers=headers)


@router.get(
    "/v1/invoices/{invoice_id}/document",
    response_class=Response,
    summary="An invoice as a PDF or HTML document",
    responses={
        200: {"description": "The invoice document; `Content-Disposition: inline; filename=\"<number>.pdf\"`",
              "content": {PDF: {"schema": {"type": "string", "format": "binary"}},
                          HTML: {"schema": {"type": "string"}}}},
        404: {"model": Problem, "description": "Unknown invoice", "content": {PROBLEM_JSON: {}}},
        406: {"model": Problem, "description": "`Accept` names neither application/pdf nor text/html",
              "content": {PROBLEM_JSON: {}}},
        **PROBLEM_RESPONSES,
        409: {"model": Problem, "description": "The invoice is a draft: not final yet, no document",
              "content": {PROBLEM_JSON: {}}},
    },
)
async def invoice_document(
    request: Request, invoice_id: PathId,
    format: DocumentFormat | None = Query(
        None, description="`pdf` or `html`; when absent, the `Accept` header decides (PDF by default)"),
    principal: Principal = Depends(require(Scope.READ)),
    container: Container = Depends(get_container),
) -> Response:
    chosen = document_format(format, request.headers.get("accept"))

    def load() -> InvoiceDocument | None:
        with container.engine.connect() as conn:
            return load_invoice_document(conn, invoice_id, issuer_name=container.settings.invoice_issuer_name)

    document = await run_in_threadpool(load)
    if document is None:
        raise ProblemError(404, "Unknown invoice", f"no invoice {invoice_id!r}", slug="not-found")
    authorize_customer(principal, document.customer_id)
    if not document.is_final:
        raise ProblemError(409, "Invoice not final yet", f"invoice {invoice_id!r} is a draft: it has no number "
                           "and may still change", slug="invoice-not-final")
    return await document_response(document, chosen)

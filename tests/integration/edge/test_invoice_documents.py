"""GET /v1/invoices/{invoice_id}/document: the invoice as PDF (default) or HTML, for the invoice's own org."""

from __future__ import annotations

import io
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from pypdf import PdfReader

from services.demo.render import render_invoices
from shared.adapters.postgres.schema.billing import invoice_lines, invoices

from .conftest import ADMIN, START, bearer, new_key, onboard

pytestmark = pytest.mark.integration

LINES = [("fee", "Team plan, 3 seats", 6_000, Decimal(3), Decimal("20")),
         ("usage", "Inference", 1_250, Decimal(500_000), Decimal("0.000025")),
         ("discount", "Coupon LAUNCH", -725, None, None),
         ("tax", "Tax 10%", 652, None, None)]
TOTAL = sum(amount for _, _, amount, _, _ in LINES)  # 7,177 cents


def _store_invoice(container, customer_id: str, *, status: str = "open", **values) -> tuple[str, str | None]:
    """A finalised invoice (or a draft) with lines, as the worker would have stored it."""
    invoice_id = f"in_{uuid.uuid4().hex[:10]}"
    number = None if status == "draft" else f"DOC-{uuid.uuid4().hex[:8].upper()}"
    with container.engine.begin() as conn:
        conn.execute(invoices.insert().values(
            invoice_id=invoice_id, subscription_id=f"sub_{uuid.uuid4().hex[:8]}", customer_id=customer_id,
            kind="period_close", period_start=START, period_end=START + timedelta(days=31), status=status,
            number=number, currency="USD", subtotal_minor=7_250, discount_minor=725, tax_minor=652,
            total_minor=TOTAL, amount_due_minor=TOTAL, tax_rate_bps=1000, plan_id="team",
            issued_at=START + timedelta(days=31), due_at=START + timedelta(days=45), **values))
        conn.execute(invoice_lines.insert(), [
            {"invoice_id": invoice_id, "line_no": n, "kind": kind, "description": description,
             "amount_minor": amount, "currency": "USD", "quantity": quantity, "unit_price": unit_price}
            for n, (kind, description, amount, quantity, unit_price) in enumerate(LINES, start=1)])
    return invoice_id, number


async def test_the_invoices_org_downloads_it_as_a_pdf_by_default(client, container):
    customer = await onboard(client, name="Acme Documents")
    invoice_id, number = _store_invoice(container, customer["customer_id"])
    reader = bearer(await new_key(client, ["read"], org_id=customer["customer_id"]))

    response = await client.get(f"/v1/invoices/{invoice_id}/document", headers=reader)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/pdf"
    assert response.headers["content-disposition"] == f'inline; filename="{number}.pdf"'
    text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(response.content)).pages)
    for expected in (number, "Acme Documents", "Open, due 24 Apr 2026", "Team plan, 3 seats", "USD 20.00",
                     "USD 60.00", "500,000", "USD 0.000025", "USD 12.50", "Coupon LAUNCH", "-USD 7.25",
                     "Tax (10.00%)", "USD 6.52", "USD 71.77"):
        assert expected in text, expected


async def test_html_is_served_when_asked_by_query_or_by_accept_header(client, container):
    customer = await onboard(client, name="Acme Pages")
    invoice_id, number = _store_invoice(container, customer["customer_id"], status="paid",
                                        paid_at=START + timedelta(days=32), amount_paid_minor=TOTAL)
    reader = bearer(await new_key(client, ["read"], org_id=customer["customer_id"]))

    by_query = await client.get(f"/v1/invoices/{invoice_id}/document?format=html", headers=reader)
    by_accept = await client.get(f"/v1/invoices/{invoice_id}/document", headers={**reader, "Accept": "text/html"})
    pdf_by_query = await client.get(f"/v1/invoices/{invoice_id}/document?format=pdf",
                                    headers={**reader, "Accept": "text/html"})

    assert (by_query.status_code, by_accept.status_code) == (200, 200)
    assert by_query.headers["content-type"].startswith("text/html")
    assert by_query.headers["content-disposition"] == f'inline; filename="{number}.html"'
    assert "default-src 'none'" in by_query.headers["content-security-policy"]
    assert by_accept.text == by_query.text
    for expected in (number, "Acme Pages", "Paid on 11 Apr 2026", "Coupon LAUNCH", "USD 71.77",
                     container.settings.invoice_issuer_name):  # the seller from BILLING_INVOICE_ISSUER_NAME
        assert expected in by_query.text, expected
    assert pdf_by_query.headers["content-type"] == "application/pdf"  # the query parameter wins


async def test_another_orgs_key_is_forbidden_and_an_admin_may_read_any(client, container):
    owner, other = await onboard(client), await onboard(client)
    invoice_id, _ = _store_invoice(container, owner["customer_id"])
    others_key = bearer(await new_key(client, ["read"], org_id=other["customer_id"]))
    ingest_key = bearer(await new_key(client, ["ingest"], org_id=owner["customer_id"]))

    foreign = await client.get(f"/v1/invoices/{invoice_id}/document", headers=others_key)
    wrong_scope = await client.get(f"/v1/invoices/{invoice_id}/document", headers=ingest_key)
    admin = await client.get(f"/v1/invoices/{invoice_id}/document", headers=ADMIN)

    assert (foreign.status_code, wrong_scope.status_code, admin.status_code) == (403, 403, 200)
    assert foreign.headers["content-type"] == "application/problem+json"


async def test_unknown_invoices_are_404_and_drafts_are_409(client, container):
    customer = await onboard(client)
    draft_id, _ = _store_invoice(container, customer["customer_id"], status="draft")
    reader = bearer(await new_key(client, ["read"], org_id=customer["customer_id"]))

    unknown = await client.get("/v1/invoices/in_does_not_exist/document", headers=reader)
    draft = await client.get(f"/v1/invoices/{draft_id}/document", headers=reader)

    assert (unknown.status_code, draft.status_code) == (404, 409)
    assert unknown.headers["content-type"] == draft.headers["content-type"] == "application/problem+json"
    assert draft.json()["type"] == "/problems/invoice-not-final"


async def test_unsupported_formats_are_refused(client, container):
    customer = await onboard(client)
    invoice_id, _ = _store_invoice(container, customer["customer_id"])

    by_accept = await client.get(f"/v1/invoices/{invoice_id}/document",
                                 headers={**ADMIN, "Accept": "application/json"})
    by_query = await client.get(f"/v1/invoices/{invoice_id}/document?format=docx", headers=ADMIN)

    assert (by_accept.status_code, by_query.status_code) == (406, 422)
    assert by_accept.json()["type"] == "/problems/not-acceptable"


async def test_the_openapi_document_names_both_content_types(client):
    spec = (await client.get("/openapi.json")).json()
    operation = spec["paths"]["/v1/invoices/{invoice_id}/document"]["get"]

    assert set(operation["responses"]["200"]["content"]) == {"application/pdf", "text/html"}
    assert {"403", "404", "406", "409", "422"} <= set(operation["responses"])
    assert [p["name"] for p in operation["parameters"] if p["in"] == "query"] == ["format"]


async def test_the_demo_writes_a_page_and_a_pdf_per_final_invoice_with_an_index(client, container, tmp_path):
    customer = await onboard(client, name="Acme Demo")
    _, number = _store_invoice(container, customer["customer_id"])
    draft_id, _ = _store_invoice(container, customer["customer_id"], status="draft")

    written = render_invoices(container.engine, tmp_path)

    pdf_text = PdfReader(tmp_path / f"{number}.pdf").pages[0].extract_text()
    assert written == len(list(tmp_path.glob("*.pdf"))) == len(list(tmp_path.glob("*.html"))) - 1
    assert "Acme Demo" in (tmp_path / f"{number}.html").read_text() and "USD 71.77" in pdf_text
    assert f'href="{number}.pdf"' in (tmp_path / "index.html").read_text()
    assert not (tmp_path / f"{draft_id}.html").exists()

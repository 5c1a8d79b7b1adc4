"""Invoice documents: the PDF and the HTML page show every value of the invoice, formatted from integer
minor units in the currency's own number of digits."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from pypdf import PdfReader

from shared.adapters.documents import invoice_document, render_invoice_html, render_invoice_pdf

pytestmark = pytest.mark.unit

START = datetime(2026, 3, 10, tzinfo=UTC)
END = START + timedelta(days=31)


def _line(kind: str, description: str, amount_minor: int, currency: str, **fields: Any) -> dict[str, Any]:
    return {"kind": kind, "description": description, "amount_minor": amount_minor, "currency": currency,
            "quantity": None, "unit_price": None, "proration": False, "period_start": None, "period_end": None,
            **fields}


def _invoice(lines: list[dict[str, Any]], currency: str, *, status: str = "open", paid: bool = False,
             tax_rate_bps: int = 0, number: str | None = "OLB-2026-000042") -> dict[str, Any]:
    total = sum(line["amount_minor"] for line in lines)
    return {"invoice_id": "inv_abc", "number": number, "status": status, "kind": "period_close",
            "currency": currency, "customer_id": "cust_acme", "subscription_id": "sub_1", "plan_id": "team",
            "period_start": START, "period_end": END, "issued_at": END, "due_at": END + timedelta(days=14),
            "paid_at": END + timedelta(days=1) if paid else None, "provider_ref": "pi_123" if paid else None,
            "total_minor": total, "amount_due_minor": max(total, 0),
            "amount_paid_minor": max(total, 0) if paid else 0, "tax_rate_bps": tax_rate_bps}


def _pdf_text(pdf: bytes) -> tuple[int, str]:
    reader = PdfReader(io.BytesIO(pdf))
    return len(reader.pages), "\n".join(page.extract_text() for page in reader.pages)


def _usd_invoice(**kwargs: Any) -> dict[str, Any]:
    lines = [
        _line("fee", "Team plan, 5 seats", 10_000, "USD", quantity=Decimal(5), unit_price=Decimal("20.00"),
              period_start=START, period_end=END),
        _line("usage", "Inference", 1_875, "USD", quantity=Decimal(1_500_000), unit_price=Decimal("0.0000125")),
        _line("discount", "Coupon WELCOME10", -1_188, "USD"),
        _line("credit", "Included credits", -500, "USD"),
        _line("tax", "Tax 20%", 2_037, "USD"),
    ]
    return {"invoice": _invoice(lines, "USD", tax_rate_bps=2000, **kwargs), "lines": lines}


def test_the_pdf_shows_issuer_number_status_customer_period_every_line_and_the_totals():
    data = _usd_invoice()
    document = invoice_document(data["invoice"], data["lines"], customer_name="Acme Labs",
                                customer_email="billing@acme.test", issuer_name="Example Issuer Ltd")

    pages, text = _pdf_text(render_invoice_pdf(document))

    assert pages == 1
    for expected in ("Example Issuer Ltd", "OLB-2026-000042", "Open, due 24 Apr 2026", "Acme Labs",
                     "billing@acme.test", "cust_acme", "10 Mar 2026 – 10 Apr 2026",
                     "Team plan, 5 seats", "5", "USD 20.00", "USD 100.00",
                     "Inference", "1,500,000", "USD 0.0000125", "USD 18.75",
                     "Coupon WELCOME10", "-USD 11.88", "Included credits", "-USD 5.00", "Tax 20%", "USD 20.37",
                     "Subtotal", "USD 118.75", "Tax (20.00%)", "Total", "USD 122.24", "Amount paid", "USD 0.00",
                     "Amount due"):
        assert expected in text, expected
    assert text.index("Amount due") < text.rindex("USD 122.24")  # owed in full: nothing paid yet


def test_a_paid_invoice_says_when_it_was_paid_and_owes_nothing():
    data = _usd_invoice(status="paid", paid=True)
    document = invoice_document(data["invoice"], data["lines"])

    _, text = _pdf_text(render_invoice_pdf(document))

    assert "Paid on 11 Apr 2026" in text and "(payment pi_123)" in text
    assert text.split("Amount paid")[1].split()[:2] == ["USD", "122.24"]
    assert text.split("Amount due")[1].split()[:2] == ["USD", "0.00"]


def test_an_uncollectible_invoice_is_marked_so_and_owes_nothing_on_the_document():
    data = _usd_invoice(status="uncollectible")
    document = invoice_document(data["invoice"], data["lines"])

    _, text = _pdf_text(render_invoice_pdf(document))

    assert "Uncollectible" in text
    assert text.split("Amount due")[1].split()[:2] == ["USD", "0.00"]


def test_a_three_digit_currency_prints_fils_and_a_zero_digit_currency_prints_whole_yen():
    kwd_lines = [_line("fee", "Plan", 12_345, "KWD", quantity=Decimal(1), unit_price=Decimal("12.345")),
                 _line("usage", "Storage", 1_005, "KWD", quantity=Decimal("2.5"), unit_price=Decimal("0.402"))]
    jpy_lines = [_line("fee", "Plan", 1_200_000, "JPY", quantity=Decimal(1), unit_price=Decimal(1_200_000)),
                 _line("discount", "Coupon", -300, "JPY")]

    _, kwd = _pdf_text(render_invoice_pdf(invoice_document(_invoice(kwd_lines, "KWD"), kwd_lines)))
    _, jpy = _pdf_text(render_invoice_pdf(invoice_document(_invoice(jpy_lines, "JPY"), jpy_lines)))

    assert "KWD 12.345" in kwd and "KWD 1.005" in kwd and "KWD 0.402" in kwd and "2.5" in kwd
    assert "KWD 13.350" in kwd  # the total: 13.350, three digits even when the last is zero
    assert "JPY 1,200,000" in jpy and "-JPY 300" in jpy and "JPY 1,199,700" in jpy
    assert "JPY 1,199,700." not in jpy and "JPY 0.00" not in jpy  # no minor digits at all


def test_an_invoice_of_120_lines_spans_several_pages_and_keeps_every_line():
    lines = [_line("usage", f"Meter {n:03d}", 100 + n, "EUR", quantity=Decimal(n + 1), unit_price=Decimal("0.01"))
             for n in range(120)]
    document = invoice_document(_invoice(lines, "EUR"), lines)

    pages, text = _pdf_text(render_invoice_pdf(document))

    assert pages >= 3
    assert all(f"Meter {n:03d}" in text for n in range(120))
    assert f"Page 1 of {pages}" in text and f"Page {pages} of {pages}" in text
    assert text.count("DESCRIPTION") == pages  # the header row repeats on every page
    assert "EUR 191.40" in text  # 120 lines of 1.00 .. 2.19


def test_the_html_page_shows_the_same_values_and_escapes_markup():
    data = _usd_invoice()
    data["lines"][0]["description"] = "Team <script>alert(1)</script>"
    document = invoice_document(data["invoice"], data["lines"], customer_name="Acme & Sons",
                                issuer_name="Example Issuer Ltd")

    page = render_invoice_html(document)

    for expected in ("Example Issuer Ltd", "OLB-2026-000042", "Open, due 24 Apr 2026", "Acme &amp; Sons",
                     "10 Mar 2026 – 10 Apr 2026", "USD 20.00", "USD 0.0000125", "-USD 11.88", "Tax (20.00%)",
                     "USD 122.24"):
        assert expected in page, expected
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_a_negative_total_is_carried_credit_and_nothing_is_due():
    lines = [_line("fee", "Downgrade credit", -2_500, "USD", proration=True)]
    document = invoice_document(_invoice(lines, "USD"), lines)

    assert (document.total, document.amount_due) == ("-USD 25.00", "USD 0.00")
    assert document.lines[0].tag == "proration" and document.lines[0].negative


def test_a_draft_is_not_final_and_file_names_keep_only_safe_characters():
    lines = [_line("fee", "Plan", 100, "USD")]
    draft = invoice_document(_invoice(lines, "USD", status="draft", number=None), lines)
    odd = invoice_document(_invoice(lines, "USD", number='../A/"B" 7'), lines)

    assert not draft.is_final and draft.file_stem == "inv_abc"
    assert odd.is_final and odd.file_stem == "-A--B--7"

"""Period labels (issue 14, item 8): a period close bills the closed period's usage and the next period's fee
in advance, so the document names the billing period (the closed one) and, beside it, the span its lines
cover; each line keeps its own period. An invoice whose lines stay inside its period shows no second label."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import pytest
from pypdf import PdfReader

from shared.adapters.documents import invoice_document, render_invoice_html, render_invoice_pdf

pytestmark = pytest.mark.unit

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
FEB_1 = datetime(2026, 2, 1, tzinfo=UTC)
MAR_1 = datetime(2026, 3, 1, tzinfo=UTC)


def _line(kind: str, amount_minor: int, start: datetime | None, end: datetime | None) -> dict[str, Any]:
    return {"kind": kind, "description": kind.title(), "amount_minor": amount_minor, "currency": "USD",
            "quantity": None, "unit_price": None, "proration": False, "period_start": start, "period_end": end}


def _close(lines: list[dict[str, Any]]) -> dict[str, Any]:
    total = sum(line["amount_minor"] for line in lines)
    return {"invoice_id": "inv_1", "number": "OLB-2026-000007", "status": "open", "kind": "period_close",
            "currency": "USD", "customer_id": "cus_1", "subscription_id": "sub_1", "plan_id": "pro",
            "period_start": JAN_1, "period_end": FEB_1, "issued_at": FEB_1, "due_at": FEB_1, "paid_at": None,
            "provider_ref": None, "total_minor": total, "amount_due_minor": total, "amount_paid_minor": 0,
            "tax_rate_bps": 0}


def test_a_period_close_names_its_billing_period_and_the_span_its_lines_cover() -> None:
    lines = [_line("usage", 300, JAN_1, FEB_1), _line("fee", 900, FEB_1, MAR_1)]
    document = invoice_document(_close(lines), lines)

    assert (document.period, document.covers) == ("01 Jan 2026 – 01 Feb 2026", "01 Jan 2026 – 01 Mar 2026")
    assert [line.period for line in document.lines] == ["01 Jan 2026 – 01 Feb 2026", "01 Feb 2026 – 01 Mar 2026"]
    html = render_invoice_html(document)
    assert "Billing period</div>01 Jan 2026 – 01 Feb 2026" in html
    assert "Lines cover 01 Jan 2026 – 01 Mar 2026" in html
    text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(render_invoice_pdf(document))).pages)
    assert "Lines cover 01 Jan 2026 – 01 Mar 2026" in text


def test_lines_inside_the_billing_period_need_no_second_label() -> None:
    lines = [_line("usage", 300, JAN_1, FEB_1), _line("tax", 30, None, None)]
    document = invoice_document(_close(lines), lines)

    assert document.covers == ""
    assert "Lines cover" not in render_invoice_html(document)

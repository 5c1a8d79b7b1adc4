"""Invoices as PDF (A4), laid out with reportlab's platypus: the same fields as the HTML page.

Contract: ``render_invoice_pdf(document) -> bytes`` is a complete PDF whose text layer holds every value of
the ``InvoiceDocument`` (issuer, number, status, customer, period, each line, the summary, the amounts
paid and due). The line table breaks across pages and repeats its header row; every page carries the
invoice number and ``Page n of m``.
"""

from __future__ import annotations

import io
from typing import Any
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.enums import TA_RIGHT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from shared.adapters.documents.model import InvoiceDocument

# NOTE: the 14 standard PDF fonts need no file and keep a document small (~5 KB), but they only cover
# Western European text (Windows-1252); other scripts print as boxes. Serving customers who write in other
# scripts means registering a TrueType font that covers them (reportlab's TTFont) and naming it here.
FONT, BOLD = "Helvetica", "Helvetica-Bold"
INK = colors.HexColor("#1d2430")
MUTED = colors.HexColor("#6b7280")
RULE = colors.HexColor("#d1d5db")
HAIRLINE = colors.HexColor("#eceef1")
CREDIT = colors.HexColor("#047857")
STATUS_COLOURS = {"paid": "#065f46", "open": "#92400e", "uncollectible": "#991b1b", "void": "#991b1b"}

MARGIN = 18 * mm
WIDTH = A4[0] - 2 * MARGIN
COLUMNS = (WIDTH * 0.49, WIDTH * 0.13, WIDTH * 0.19, WIDTH * 0.19)

_BODY = ParagraphStyle("body", fontName=FONT, fontSize=9, leading=12, textColor=INK)
_SMALL = ParagraphStyle("small", parent=_BODY, fontSize=8, leading=10, textColor=MUTED)
_RIGHT = ParagraphStyle("right", parent=_BODY, alignment=TA_RIGHT)
_TITLE = ParagraphStyle("title", parent=_BODY, fontName=BOLD, fontSize=20, leading=24)
_NUMBER = ParagraphStyle("number", parent=_RIGHT, fontName=BOLD, fontSize=12, leading=15)


def _text(value: str) -> str:
    return escape(value)


def _muted(value: str) -> str:
    return f'<font color="{MUTED.hexval()}" size="8">{_text(value)}</font>'


def _header(doc: InvoiceDocument) -> Table:
    colour = STATUS_COLOURS.get(doc.status, "#374151")
    left = [Paragraph(_text(doc.document_title), _TITLE), Paragraph(_text(doc.issuer_name), _SMALL)]
    right = [Paragraph(_text(doc.title), _NUMBER),
             Paragraph(f'<font name="{BOLD}" color="{colour}">{_text(doc.status_text)}</font>', _RIGHT)]
    if doc.issued_on:
        right.append(Paragraph(_muted(f"issued {doc.issued_on}"), _RIGHT))
    table = Table([[left, right]], colWidths=(WIDTH * 0.55, WIDTH * 0.45))
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LINEBELOW", (0, 0), (-1, 0), 1.5, INK),
                               ("LEFTPADDING", (0, 0), (-1, -1), 0), ("RIGHTPADDING", (0, 0), (-1, -1), 0),
                               ("BOTTOMPADDING", (0, 0), (-1, -1), 8)]))
    return table


def _parties(doc: InvoiceDocument) -> Table:
    due = f", due {doc.due_on}" if doc.due_on else ""
    cells = [
        [_muted("Billed to"), f"<b>{_text(doc.customer_name)}</b>", _text(doc.customer_email),
         _muted(doc.customer_id)],
        [_muted("Subscription"), _text(doc.plan_id), _muted(doc.subscription_id)],
        [_muted("Billing period"), _text(doc.period),
         _muted(f"Lines cover {doc.covers}") if doc.covers else "", _muted(f"{doc.kind} invoice{due}")],
    ]
    table = Table([[Paragraph("<br/>".join(c for c in cell if c), _BODY) for cell in cells]],
                  colWidths=(WIDTH * 0.36, WIDTH * 0.30, WIDTH * 0.34))
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0)]))
    return table


def _lines(doc: InvoiceDocument) -> Table:
    # NOTE: only the description wraps (a Paragraph); the figures are plain cell strings, which lay out
    # several times faster than paragraphs and never need wrapping in their columns.
    rows: list[list[Any]] = [["DESCRIPTION", "QUANTITY", "UNIT PRICE", "AMOUNT"]]
    styles: list[tuple[Any, ...]] = [
        ("FONT", (0, 0), (-1, -1), FONT, 9), ("TEXTCOLOR", (0, 0), (-1, -1), INK),
        ("FONT", (0, 0), (-1, 0), FONT, 7.5), ("TEXTCOLOR", (0, 0), (-1, 0), MUTED),
        ("ALIGN", (1, 0), (-1, -1), "RIGHT"), ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("LINEBELOW", (0, 0), (-1, 0), 0.8, RULE), ("LINEBELOW", (0, 1), (-1, -1), 0.3, HAIRLINE),
        ("TOPPADDING", (0, 0), (-1, -1), 4), ("BOTTOMPADDING", (0, 0), (-1, -1), 4),
    ]
    for row, line in enumerate(doc.lines, start=1):
        description = _text(line.description)
        if line.tag:
            description += f" {_muted(f'[{line.tag}]')}"
        if line.period:
            description += f"<br/>{_muted(line.period)}"
        rows.append([Paragraph(description, _BODY), line.quantity, line.unit_price, line.amount])
        if line.negative:
            styles.append(("TEXTCOLOR", (3, row), (3, row), CREDIT))
    table = Table(rows, colWidths=COLUMNS, repeatRows=1)
    table.setStyle(TableStyle(styles))
    return table


def _totals(doc: InvoiceDocument) -> Table:
    rows = [["Subtotal", doc.subtotal], ["Discounts", doc.discounts], ["Credits applied", doc.credits],
            [f"Tax ({doc.tax_rate})", doc.tax], ["Total", doc.total], ["Amount paid", doc.amount_paid],
            ["Amount due", doc.amount_due]]
    total_row, due_row = 4, 6
    table = Table(rows, colWidths=(WIDTH * 0.22, WIDTH * 0.22), hAlign="RIGHT")
    table.setStyle(TableStyle([
        ("FONT", (0, 0), (-1, -1), FONT, 9), ("TEXTCOLOR", (0, 0), (-1, -1), INK), ("ALIGN", (1, 0), (1, -1), "RIGHT"),
        ("FONT", (0, total_row), (-1, total_row), BOLD, 10.5), ("FONT", (0, due_row), (-1, due_row), BOLD, 9),
        ("LINEABOVE", (0, total_row), (-1, total_row), 1.5, INK),
        ("TOPPADDING", (0, 0), (-1, -1), 2), ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
    ]))
    return table


def _footer(doc: InvoiceDocument) -> Paragraph:
    paid = f"{doc.paid_note} " if doc.paid_note else ""
    return Paragraph(_text(f"{paid}All amounts in {doc.currency}. The total is the sum of the rounded lines "
                           f"above. {doc.document_title} id {doc.invoice_id}."), _SMALL)


def _numbered_canvas(label: str) -> type[Canvas]:
    """A canvas that stamps ``<label> · Page n of m`` on every page (m is known once all pages are laid)."""

    class NumberedCanvas(Canvas):  # type: ignore[misc]  # reportlab ships no type hints
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._pages: list[dict[str, Any]] = []

        def showPage(self) -> None:
            self._pages.append(dict(self.__dict__))
            self._startPage()

        def save(self) -> None:
            for number, state in enumerate(self._pages, start=1):
                self.__dict__.update(state)
                self.setFont(FONT, 7.5)
                self.setFillColor(MUTED)
                self.drawRightString(A4[0] - MARGIN, 10 * mm, f"{label} · Page {number} of {len(self._pages)}")
                super().showPage()
            super().save()

    return NumberedCanvas


def render_invoice_pdf(document: InvoiceDocument) -> bytes:
    """The invoice as a PDF document (A4, one or more pages)."""
    buffer = io.BytesIO()
    pdf = SimpleDocTemplate(buffer, pagesize=A4, leftMargin=MARGIN, rightMargin=MARGIN, topMargin=MARGIN,
                            bottomMargin=MARGIN, title=f"{document.document_title} {document.title}",
                            author=document.issuer_name,
                            subject=f"{document.document_title} {document.title} for {document.customer_name}",
                            creator=document.issuer_name)
    pdf.build([_header(document), Spacer(0, 6 * mm), _parties(document), Spacer(0, 6 * mm), _lines(document),
               Spacer(0, 3 * mm), _totals(document), Spacer(0, 8 * mm), _footer(document)],
              canvasmaker=_numbered_canvas(f"{document.document_title} {document.title}"))
    return buffer.getvalue()

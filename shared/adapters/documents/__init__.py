"""Invoice documents for customers: one formatted view of an invoice (``InvoiceDocument``), rendered as an
HTML page or a PDF. Used by the edge (``GET /v1/invoices/{id}/document``) and by the demo."""

from shared.adapters.documents.invoice_html import render_index_html, render_invoice_html
from shared.adapters.documents.invoice_pdf import render_invoice_pdf
from shared.adapters.documents.model import DocumentLine, InvoiceDocument, invoice_document
from shared.adapters.documents.source import load_final_invoice_documents, load_invoice_document

__all__ = [
    "DocumentLine",
    "InvoiceDocument",
    "invoice_document",
    "load_final_invoice_documents",
    "load_invoice_document",
    "render_index_html",
    "render_invoice_html",
    "render_invoice_pdf",
]

"""Invoices as standalone HTML pages (inline styles, no external resources), and an index of several.

The page shows exactly the fields of ``InvoiceDocument``; every value is autoescaped.
"""

from __future__ import annotations

from collections.abc import Sequence

from jinja2 import Environment, select_autoescape

from shared.adapters.documents.model import InvoiceDocument

INVOICE_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ inv.document_title }} {{ inv.number or inv.invoice_id }}</title>
<style>
 body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2430; margin: 40px auto;
        max-width: 820px; padding: 0 24px; }
 header { display: flex; justify-content: space-between; align-items: flex-start; border-bottom: 2px solid #1d2430;
          padding-bottom: 16px; }
 h1 { margin: 0; font-size: 26px; } .muted { color: #6b7280; } .right { text-align: right; }
 .status { display: inline-block; padding: 2px 10px; border-radius: 12px; font-weight: 600; font-size: 12px;
           text-transform: uppercase; letter-spacing: .04em; }
 .paid { background: #d1fae5; color: #065f46; } .open { background: #fef3c7; color: #92400e; }
 .uncollectible, .void { background: #fee2e2; color: #991b1b; } .draft { background: #e5e7eb; }
 table { width: 100%; border-collapse: collapse; margin-top: 24px; }
 th { text-align: left; font-size: 12px; text-transform: uppercase; color: #6b7280; border-bottom: 1px solid #d1d5db;
      padding: 8px 6px; }
 td { padding: 8px 6px; border-bottom: 1px solid #f0f1f3; vertical-align: top; }
 td.num, th.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
 .neg { color: #047857; } .tag { font-size: 11px; color: #6b7280; border: 1px solid #d1d5db; border-radius: 4px;
        padding: 0 4px; margin-left: 4px; }
 .totals { margin-left: auto; width: 340px; margin-top: 12px; } .totals td { border: 0; padding: 4px 6px; }
 .totals tr.grand td { border-top: 2px solid #1d2430; font-weight: 700; font-size: 16px; padding-top: 8px; }
 .cols { display: flex; gap: 48px; margin-top: 20px; } footer { margin-top: 40px; font-size: 12px; }
</style></head><body>
<header>
 <div><h1>{{ inv.document_title }}</h1><div class="muted">{{ inv.issuer_name }}</div></div>
 <div class="right"><div><strong>{{ inv.number or "draft" }}</strong></div>
  <div><span class="status {{ inv.status }}">{{ inv.status }}</span></div>
  <div class="muted">{{ inv.status_text }}</div>
  {% if inv.issued_on %}<div class="muted">issued {{ inv.issued_on }}</div>{% endif %}</div>
</header>
<div class="cols">
 <div><div class="muted">Billed to</div><strong>{{ inv.customer_name }}</strong><br>{{ inv.customer_email }}<br>
  <span class="muted">{{ inv.customer_id }}</span></div>
 <div><div class="muted">Subscription</div>{{ inv.plan_id }}<br>
  <span class="muted">{{ inv.subscription_id }}</span></div>
 <div><div class="muted">Billing period</div>{{ inv.period }}<br>
  {% if inv.covers %}<span class="muted">Lines cover {{ inv.covers }}</span><br>{% endif %}
  <span class="muted">{{ inv.kind }} invoice{% if inv.due_on %}, due {{ inv.due_on }}{% endif %}</span></div>
</div>
<table>
 <thead><tr><th>Description</th><th class="num">Quantity</th><th class="num">Unit price</th>
  <th class="num">Amount</th></tr></thead>
 <tbody>
 {% for l in inv.lines %}<tr>
  <td>{{ l.description }}{% if l.tag %}<span class="tag">{{ l.tag }}</span>{% endif %}
   {% if l.period %}<div class="muted">{{ l.period }}</div>{% endif %}</td>
  <td class="num">{{ l.quantity }}</td><td class="num">{{ l.unit_price }}</td>
  <td class="num {% if l.negative %}neg{% endif %}">{{ l.amount }}</td></tr>
 {% endfor %}
 </tbody>
</table>
<table class="totals">
 <tr><td>Subtotal</td><td class="num">{{ inv.subtotal }}</td></tr>
 <tr><td>Discounts</td><td class="num neg">{{ inv.discounts }}</td></tr>
 <tr><td>Credits applied</td><td class="num neg">{{ inv.credits }}</td></tr>
 <tr><td>Tax ({{ inv.tax_rate }})</td><td class="num">{{ inv.tax }}</td></tr>
 <tr class="grand"><td>Total</td><td class="num">{{ inv.total }}</td></tr>
 <tr><td>Amount paid</td><td class="num">{{ inv.amount_paid }}</td></tr>
 <tr><td><strong>Amount due</strong></td><td class="num"><strong>{{ inv.amount_due }}</strong></td></tr>
</table>
<footer class="muted">{% if inv.paid_note %}{{ inv.paid_note }} {% endif %}All amounts in {{ inv.currency }}.
 Generated from the billing database; the total is the sum of the rounded lines above.
 {{ inv.document_title }} id {{ inv.invoice_id }}.</footer>
</body></html>
"""

INDEX_TEMPLATE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Invoices</title>
<style>body{font:14px system-ui,sans-serif;margin:32px}td,th{padding:4px 10px;text-align:left}
td.num{text-align:right}</style></head><body><h1>Invoices ({{ rows|length }})</h1>
<table><tr><th>Number</th><th>Customer</th><th>Kind</th><th>Status</th><th>Total</th>
{% if pdf_links %}<th></th>{% endif %}</tr>
{% for r in rows %}<tr><td><a href="{{ r.file_stem }}.html">{{ r.number or r.invoice_id }}</a></td>
<td>{{ r.customer_name }}</td><td>{{ r.kind }}</td><td>{{ r.status }}</td><td class="num">{{ r.total }}</td>
{% if pdf_links %}<td><a href="{{ r.file_stem }}.pdf">PDF</a></td>{% endif %}</tr>{% endfor %}
</table></body></html>"""


_env = Environment(autoescape=select_autoescape(default=True))
_invoice_template = _env.from_string(INVOICE_TEMPLATE)
_index_template = _env.from_string(INDEX_TEMPLATE)


def render_invoice_html(document: InvoiceDocument) -> str:
    """One invoice as a complete HTML page."""
    return _invoice_template.render(inv=document)


def render_index_html(documents: Sequence[InvoiceDocument], *, pdf_links: bool = False) -> str:
    """A page listing `documents`, each linked to ``<file_stem>.html`` (and ``<file_stem>.pdf`` when
    `pdf_links`) beside it."""
    return _index_template.render(rows=documents, pdf_links=pdf_links)

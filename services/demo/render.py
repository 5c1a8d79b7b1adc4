"""Render invoices as standalone HTML pages (one file per invoice plus an index), from PostgreSQL."""

from __future__ import annotations

import html
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from jinja2 import Environment, select_autoescape

from shared.domain.money import Money

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Invoice {{ inv.number or inv.invoice_id }}</title>
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
 <div><h1>Invoice</h1><div class="muted">OpenLedger Billing (demo issuer)</div></div>
 <div class="right"><div><strong>{{ inv.number or "draft" }}</strong></div>
  <div><span class="status {{ inv.status }}">{{ inv.status }}</span></div>
  <div class="muted">issued {{ inv.issued_at_fmt }}</div></div>
</header>
<div class="cols">
 <div><div class="muted">Billed to</div><strong>{{ inv.customer_name }}</strong><br>{{ inv.customer_email }}<br>
  <span class="muted">{{ inv.customer_id }}</span></div>
 <div><div class="muted">Subscription</div>{{ inv.plan_id or "" }}<br>
  <span class="muted">{{ inv.subscription_id }}</span></div>
 <div><div class="muted">Billing period</div>{{ inv.period_fmt }}<br>
  <span class="muted">{{ inv.kind }} invoice{% if inv.due_at_fmt %}, due {{ inv.due_at_fmt }}{% endif %}</span></div>
</div>
<table>
 <thead><tr><th>Description</th><th class="num">Quantity</th><th class="num">Unit price</th>
  <th class="num">Amount</th></tr></thead>
 <tbody>
 {% for l in lines %}<tr>
  <td>{{ l.description }}{% if l.proration %}<span class="tag">proration</span>{% endif %}
   {% if l.kind in ("discount", "credit", "tax", "adjustment") %}<span class="tag">{{ l.kind }}</span>{% endif %}
   {% if l.period_fmt %}<div class="muted">{{ l.period_fmt }}</div>{% endif %}</td>
  <td class="num">{{ l.quantity_fmt }}</td><td class="num">{{ l.unit_price_fmt }}</td>
  <td class="num {% if l.negative %}neg{% endif %}">{{ l.amount_fmt }}</td></tr>
 {% endfor %}
 </tbody>
</table>
<table class="totals">
 <tr><td>Subtotal</td><td class="num">{{ inv.subtotal_fmt }}</td></tr>
 <tr><td>Discounts</td><td class="num neg">{{ inv.discount_fmt }}</td></tr>
 <tr><td>Credits applied</td><td class="num neg">{{ inv.credits_fmt }}</td></tr>
 <tr><td>Tax ({{ inv.tax_rate_fmt }})</td><td class="num">{{ inv.tax_fmt }}</td></tr>
 <tr class="grand"><td>Total</td><td class="num">{{ inv.total_fmt }}</td></tr>
 <tr><td>Amount paid</td><td class="num">{{ inv.paid_fmt }}</td></tr>
 <tr><td><strong>Amount due</strong></td><td class="num"><strong>{{ inv.due_fmt }}</strong></td></tr>
</table>
<footer class="muted">{% if inv.paid_at_fmt %}Paid on {{ inv.paid_at_fmt }}{% if inv.provider_ref %} (payment
 {{ inv.provider_ref }}){% endif %}. {% endif %}All amounts in {{ inv.currency }}. Generated from the billing
 database; the total is the sum of the rounded lines above. Invoice id {{ inv.invoice_id }}.</footer>
</body></html>
"""

INDEX = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Demo invoices</title>
<style>body{font:14px system-ui,sans-serif;margin:32px}td,th{padding:4px 10px;text-align:left}
td.num{text-align:right}</style></head><body><h1>Invoices ({{ rows|length }})</h1>
<table><tr><th>Number</th><th>Customer</th><th>Kind</th><th>Status</th><th>Total</th></tr>
{% for r in rows %}<tr><td><a href="{{ r.file }}">{{ r.number or r.invoice_id }}</a></td><td>{{ r.customer_name }}</td>
<td>{{ r.kind }}</td><td>{{ r.status }}</td><td class="num">{{ r.total_fmt }}</td></tr>{% endfor %}
</table></body></html>"""

_env = Environment(autoescape=select_autoescape(default=True))


def _money(amount_minor: int | None, currency: str) -> str:
    return Money(int(amount_minor or 0), currency).format()


def _day(value: Any) -> str:
    return value.strftime("%d %b %Y") if value is not None else ""


def _quantity(q: Decimal | None) -> str:
    if q is None:
        return ""
    q = q.normalize()
    return f"{q:,f}" if q != q.to_integral() else f"{int(q):,}"


def render_invoices(engine: sa.Engine, out_dir: Path, *, limit: int | None = None) -> int:
    """Write one HTML file per finalised invoice and an index.html; returns how many were written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    template = _env.from_string(TEMPLATE)
    with engine.connect() as conn:
        invoices = conn.execute(sa.text(
            "SELECT i.*, c.name AS customer_name, c.email AS customer_email FROM invoices i "
            "LEFT JOIN customers c USING (customer_id) WHERE i.status <> 'draft' "
            "ORDER BY i.number_seq NULLS LAST, i.invoice_id" + (f" LIMIT {int(limit)}" if limit else ""))
        ).mappings().all()
        lines_by_invoice: dict[str, list[dict[str, Any]]] = {}
        for stored in conn.execute(sa.text(
                "SELECT * FROM invoice_lines WHERE invoice_id = ANY(:ids) ORDER BY invoice_id, line_no"),
                {"ids": [i["invoice_id"] for i in invoices]}).mappings():
            lines_by_invoice.setdefault(stored["invoice_id"], []).append(dict(stored))
    index_rows = []
    for row in invoices:
        inv: dict[str, Any] = dict(row)
        cur = inv["currency"]
        # The summary is computed from the lines themselves, so what the customer reads always adds up to the
        # total (which the audit checks against the stored invoice).
        by_kind: dict[str, int] = {}
        for line in lines_by_invoice.get(inv["invoice_id"], []):
            by_kind[line["kind"]] = by_kind.get(line["kind"], 0) + line["amount_minor"]
        charges = sum(v for k, v in by_kind.items() if k in ("fee", "usage", "proration", "adjustment"))
        view: dict[str, Any] = dict(inv)
        view.update(
            issued_at_fmt=_day(inv["issued_at"]), due_at_fmt=_day(inv["due_at"]),
            paid_at_fmt=_day(inv["paid_at"]) if inv["status"] == "paid" else "",
            period_fmt=f"{_day(inv['period_start'])} – {_day(inv['period_end'])}",
            subtotal_fmt=_money(charges, cur), discount_fmt=_money(by_kind.get("discount", 0), cur),
            credits_fmt=_money(by_kind.get("credit", 0), cur), tax_fmt=_money(by_kind.get("tax", 0), cur),
            tax_rate_fmt=f"{Decimal(inv['tax_rate_bps']) / 100:.2f}%", total_fmt=_money(inv["total_minor"], cur),
            paid_fmt=_money(inv["amount_paid_minor"], cur),
            due_fmt=_money(inv["total_minor"] - inv["amount_paid_minor"] if inv["status"] == "open" else 0, cur),
        )
        lines = []
        for line in lines_by_invoice.get(inv["invoice_id"], []):
            unit = line["unit_price"]
            lines.append({
                **line,
                "quantity_fmt": _quantity(line["quantity"]) if line["kind"] in ("fee", "usage", "proration") else "",
                "unit_price_fmt": f"{unit.normalize():f} {cur}" if unit is not None else "",
                "amount_fmt": _money(line["amount_minor"], cur),
                "negative": line["amount_minor"] < 0,
                "period_fmt": (f"{_day(line['period_start'])} – {_day(line['period_end'])}"
                               if line["period_start"] else ""),
            })
        name = f"{(inv['number'] or inv['invoice_id']).replace('/', '-')}.html"
        (out_dir / name).write_text(template.render(inv=view, lines=lines))
        index_rows.append({**view, "file": html.escape(name)})
    (out_dir / "index.html").write_text(_env.from_string(INDEX).render(rows=index_rows))
    return len(invoices)

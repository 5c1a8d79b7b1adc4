"""Metronome's invoice shape over our invoices (pure).

Money: Metronome states amounts in the invoice's credit type; for USD that is "USD (cents)" (id
`2714e483-4ff1-48e4-9e25-ac732e8f24f2`), so `total`, `subtotal` and line `total`s are our integer minor units
as JSON numbers (USD 12.34 -> 1234), and a line's `unit_price` is its unit price in cents (0.005 USD -> 0.5).
Another currency's invoice (a customer onboarded natively) is stated in that currency's minor units under a
credit type named for it (id `<ISO code>`, name "<ISO code> (minor units)").

| Metronome | ours |
|---|---|
| `status` DRAFT / FINALIZED / VOID | draft / open, paid, uncollectible / void |
| `external_invoice.external_status` | DRAFT, FINALIZED (open), PAID, UNCOLLECTIBLE, VOID |
| `type` USAGE / SCHEDULED | every invoice / a manual one-off charge |
| `start_timestamp`, `end_timestamp` | the billed period (`period_start`, `period_end`) |
| `line_items[]` name, quantity, total, unit_price | line description, quantity, amount (cents), unit price (cents) |
| line `type` usage, subscription, discount | line kind usage, fee or proration, discount |
| line `type` applied_commit_or_credit, tax, adjustment | line kind credit, tax, adjustment |
| line `product_id` | the meter (usage) or plan (fee) the line bills |
| `contract_id` | the Metronome contract whose subscription the invoice bills |
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from services.ingest.views import InvoiceLineView, InvoiceView
from shared.domain.money import minor_units

USD_CENTS = "2714e483-4ff1-48e4-9e25-ac732e8f24f2"  # Metronome's id of its "USD (cents)" credit type
STATUSES = {"draft": "DRAFT", "open": "FINALIZED", "paid": "FINALIZED", "uncollectible": "FINALIZED", "void": "VOID"}
EXTERNAL = {"draft": "DRAFT", "open": "FINALIZED", "paid": "PAID", "uncollectible": "UNCOLLECTIBLE", "void": "VOID"}
LINE_TYPES = {"usage": "usage", "fee": "subscription", "proration": "subscription", "discount": "discount",
              "credit": "applied_commit_or_credit", "tax": "tax", "adjustment": "adjustment"}


def credit_type(currency: str) -> dict[str, str]:
    if currency == "USD":
        return {"id": USD_CENTS, "name": "USD (cents)"}
    return {"id": currency, "name": f"{currency} (minor units)"}


def currency_of_credit_type(credit_type_id: str) -> str:
    return "USD" if credit_type_id == USD_CENTS else credit_type_id


def invoice_type(invoice: InvoiceView) -> str:
    return "SCHEDULED" if invoice.kind == "manual" else "USAGE"


def _number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


def line_json(line: InvoiceLineView) -> dict[str, Any]:
    unit_price = (None if line.unit_price is None
                  else _number(line.unit_price.scaleb(minor_units(line.currency))))
    product = line.meter_id if line.kind in ("usage", "adjustment") and line.meter_id else line.plan_id
    return {"name": line.description, "type": LINE_TYPES.get(line.kind, line.kind), "total": line.amount_minor,
            "credit_type": credit_type(line.currency),
            "quantity": None if line.quantity is None else _number(line.quantity), "unit_price": unit_price,
            "product_id": product,
            "product_type": "USAGE" if line.kind == "usage" else ("SUBSCRIPTION" if line.plan_id else None),
            "starting_at": line.period_start.isoformat() if line.period_start else None,
            "ending_before": line.period_end.isoformat() if line.period_end else None,
            "is_prorated": line.proration, "custom_fields": {}}


def invoice_json(invoice: InvoiceView, contract_ids: Mapping[str, str]) -> dict[str, Any]:
    """Metronome's `Invoice`; `contract_ids` maps subscription ids to the contracts they belong to."""
    return {"id": invoice.invoice_id, "customer_id": invoice.customer_id, "status": STATUSES[invoice.status],
            "type": invoice_type(invoice), "total": invoice.total_minor, "subtotal": invoice.subtotal_minor,
            "credit_type": credit_type(invoice.currency),
            "line_items": [line_json(line) for line in invoice.lines],
            "start_timestamp": invoice.period_start.isoformat(), "end_timestamp": invoice.period_end.isoformat(),
            "issued_at": invoice.issued_at.isoformat() if invoice.issued_at else None,
            "contract_id": contract_ids.get(invoice.subscription_id),
            "external_invoice": {"billing_provider_type": "stripe", "invoice_id": invoice.number,
                                 "external_status": EXTERNAL[invoice.status], "invoiced_total": invoice.total_minor,
                                 "invoiced_sub_total": invoice.subtotal_minor},
            "custom_fields": {}}

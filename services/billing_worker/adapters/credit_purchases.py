"""Prepaid credit purchases in PostgreSQL (`credit_purchases`), read and written in the batch transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from shared.adapters.postgres.match import one_of
from shared.adapters.postgres.schema.billing import auto_recharges, credit_purchases
from shared.domain.credit_purchase import AutoRecharge, CreditPurchase, PurchaseOrigin, PurchaseStatus
from shared.domain.money import Money


def _purchase(row: Any) -> CreditPurchase:
    return CreditPurchase(
        purchase_id=row.purchase_id, subscription_id=row.subscription_id, customer_id=row.customer_id,
        meter_id=row.meter_id, amount=Money(row.amount_minor, row.currency), price=Money(row.price_minor, row.currency),
        invoice_id=row.invoice_id, created_at=row.created_at, expires_at=row.expires_at,
        origin=PurchaseOrigin(row.origin), status=PurchaseStatus(row.status), grant_id=row.grant_id,
        settled_at=row.settled_at)


def purchase(conn: sa.Connection, purchase_id: str) -> CreditPurchase | None:
    row = conn.execute(sa.select(credit_purchases).where(credit_purchases.c.purchase_id == purchase_id)).first()
    return _purchase(row) if row is not None else None


def purchase_of_invoice(conn: sa.Connection, invoice_id: str) -> CreditPurchase | None:
    row = conn.execute(sa.select(credit_purchases).where(credit_purchases.c.invoice_id == invoice_id)
                       .with_for_update()).first()
    return _purchase(row) if row is not None else None


def purchases_of_invoices(conn: sa.Connection, invoice_ids: Sequence[str]) -> dict[str, CreditPurchase]:
    """`purchase_of_invoice` for many invoices in one statement (a run of payment outcomes), locked in
    purchase id order; an invoice that sold no credit is absent."""
    if not invoice_ids:
        return {}
    c = credit_purchases.c
    rows = conn.execute(sa.select(credit_purchases).where(one_of(c.invoice_id, sorted(set(invoice_ids))))
                        .order_by(c.purchase_id).with_for_update()).all()
    return {row.invoice_id: _purchase(row) for row in rows}


def add(conn: sa.Connection, p: CreditPurchase) -> bool:
    """Insert; False when the id exists or a recharge is already pending for the subscription and meter."""
    inserted = conn.execute(insert(credit_purchases).values(
        purchase_id=p.purchase_id, subscription_id=p.subscription_id, customer_id=p.customer_id,
        meter_id=p.meter_id, amount_minor=p.amount.amount_minor, price_minor=p.price.amount_minor,
        currency=p.amount.currency, invoice_id=p.invoice_id, origin=p.origin.value, status=p.status.value,
        grant_id=p.grant_id, expires_at=p.expires_at, created_at=p.created_at, settled_at=p.settled_at,
    ).on_conflict_do_nothing().returning(credit_purchases.c.purchase_id)).first()
    return inserted is not None


def save(conn: sa.Connection, p: CreditPurchase) -> None:
    conn.execute(sa.update(credit_purchases).where(credit_purchases.c.purchase_id == p.purchase_id)
                 .values(status=p.status.value, grant_id=p.grant_id, settled_at=p.settled_at))


def enabled_recharges(conn: sa.Connection, subscription_ids: Sequence[str]) -> dict[str, list[AutoRecharge]]:
    if not subscription_ids:
        return {}
    a = auto_recharges.c
    out: dict[str, list[AutoRecharge]] = {}
    for row in conn.execute(sa.select(auto_recharges).where(one_of(a.subscription_id, subscription_ids), a.enabled)
                           .order_by(a.subscription_id, a.meter_id)):
        out.setdefault(row.subscription_id, []).append(AutoRecharge(
            meter_id=row.meter_id, threshold=Money(row.threshold_minor, row.currency),
            target=Money(row.target_minor, row.currency)))
    return out

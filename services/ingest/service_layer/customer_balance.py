"""The customer credit balance at the edge (issue 14): its balances and entries, and manual adjustments.

# NOTE: an adjustment is written by the edge itself, not sent to the worker as a command: a balance belongs to
# a customer, not to a subscription, so it has no partition and no single writer; every writer (the workers'
# finalisations, voids and credit notes, and this) goes through the same SQL (shared/adapters/postgres/
# customer_balance.py): the row is locked FOR UPDATE, the amount decided on the locked figure, the entry
# inserted under its id, and the CHECK (balance >= 0) is the backstop. The answer is then synchronous (no
# outcome to wait for). The entry id derives from the caller and its Idempotency-Key when one is sent, so a
# retry after the edge's idempotency row was purged still writes one entry.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel

from services.ingest.audit import record
from services.ingest.auth import Principal
from services.ingest.service_layer.refusals import UnknownCustomer
from shared.adapters.postgres import customer_balance as balances
from shared.adapters.postgres.schema.core import customers
from shared.domain.customer_balance import (
    BalanceEntry,
    BalanceEntryKind,
    balance_after,
    balance_entry_id,
)


class CustomerBalanceView(BaseModel):
    currency: str
    balance_minor: int
    updated_at: datetime | None = None


class CustomerBalancesView(BaseModel):
    customer_id: str
    balances: list[CustomerBalanceView]


class BalanceEntryView(BaseModel):
    entry_id: str
    seq: int
    currency: str
    amount_minor: int
    kind: str
    invoice_id: str | None = None
    credit_note_id: str | None = None
    description: str
    occurred_at: datetime


class AdjustmentView(BaseModel):
    entry: BalanceEntryView
    balance: CustomerBalanceView


def _require_customer(conn: sa.Connection, customer_id: str) -> None:
    if conn.execute(sa.select(customers.c.customer_id).where(customers.c.customer_id == customer_id)).first() is None:
        raise UnknownCustomer(f"no customer {customer_id!r}", field="customer_id")


def balances_of(engine: sa.Engine, customer_id: str) -> CustomerBalancesView:
    with engine.connect() as conn:
        _require_customer(conn, customer_id)
        rows = balances.balances_of(conn, customer_id)
    return CustomerBalancesView(customer_id=customer_id, balances=[
        CustomerBalanceView(currency=r.currency, balance_minor=r.balance_minor, updated_at=r.updated_at)
        for r in rows])


def _entry_view(row: Any) -> BalanceEntryView:
    return BalanceEntryView(entry_id=row.entry_id, seq=row.seq, currency=row.currency, amount_minor=row.amount_minor,
                            kind=row.kind, invoice_id=row.invoice_id, credit_note_id=row.credit_note_id,
                            description=row.description, occurred_at=row.occurred_at)


def entries_of(engine: sa.Engine, customer_id: str, after: int | None, limit: int,
               currency: str | None = None) -> tuple[list[BalanceEntryView], str | None]:
    """A keyset page of the customer's entries in write order, and the key to continue after."""
    with engine.connect() as conn:
        _require_customer(conn, customer_id)
        rows = balances.entries_of(conn, customer_id, after_seq=after, limit=limit + 1, currency=currency)
    more = len(rows) > limit
    rows = list(rows[:limit])
    return [_entry_view(r) for r in rows], str(rows[-1].seq) if more and rows else None


def adjust(engine: sa.Engine, customer_id: str, currency: str, amount_minor: int, description: str, *,
           principal: Principal, idempotency_key: str | None, now: datetime,
           request_id: str | None) -> AdjustmentView:
    """Credit (+) or debit (-) the customer's balance in `currency` by hand; a debit below zero is refused
    (`insufficient_balance`, from the domain). Audited with the caller."""
    key = (f"{principal.key_id}|{idempotency_key}" if idempotency_key is not None
           else uuid.uuid4().hex)
    entry = BalanceEntry(entry_id=balance_entry_id(BalanceEntryKind.ADJUSTMENT, customer_id, key),
                         customer_id=customer_id, currency=currency, amount_minor=amount_minor,
                         kind=BalanceEntryKind.ADJUSTMENT, occurred_at=now, description=description)
    with engine.begin() as conn:
        _require_customer(conn, customer_id)
        held = balances.lock_balances(conn, [(customer_id, currency)])[(customer_id, currency)]
        stored = balances.entry(conn, entry.entry_id)
        if stored is None:  # not a replay: decided on the locked figure
            balance_after(customer_id, currency, held, amount_minor)
            balances.apply_entry(conn, entry)
            record(conn, principal, "customer_balance.adjust", customer_id=customer_id, request_id=request_id,
                   entry_id=entry.entry_id, currency=currency, amount_minor=amount_minor)
            stored = balances.entry(conn, entry.entry_id)
        balance = next(r for r in balances.balances_of(conn, customer_id) if r.currency == currency)
    return AdjustmentView(entry=_entry_view(stored), balance=CustomerBalanceView(
        currency=balance.currency, balance_minor=balance.balance_minor, updated_at=balance.updated_at))

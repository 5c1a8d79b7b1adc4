"""The customer credit balance in PostgreSQL: one writer's SQL, used by the billing worker (finalisation draws,
invoice credits, voids) and by the edge (manual adjustments), inside the caller's transaction.

How two writers stay correct: `lock_balances` takes the positive balance rows FOR UPDATE in one statement,
always in (customer_id, currency) order so two transactions locking several rows cannot deadlock on the
order; the amount is then decided from the locked figure (the domain's `draw_amount` / `balance_after`) and
`apply_entry` inserts the entry under its deterministic primary key and, only when it was really inserted,
moves the row with `SET balance_minor = balance_minor + :delta`. The CHECK (balance_minor >= 0) is the
backstop: a debit that would overdraw fails the statement, it never commits a negative balance.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from shared.adapters.postgres.schema.billing import customer_balance_entries, customer_balances
from shared.domain.customer_balance import BalanceEntry

Pair = tuple[str, str]  # (customer_id, currency)


def lock_balances(conn: sa.Connection, pairs: Iterable[Pair]) -> dict[Pair, int]:
    """The balances of `pairs`, the positive ones locked FOR UPDATE until the caller's transaction ends (in a
    stable order), in one statement; 0 for a pair with no row or nothing in it.

    A balance at 0 is not locked (and a missing row is not created): nothing can be drawn or debited from it,
    and a concurrent credit only adds, so reading 0 is the same as running before that credit. This keeps a
    billing run that draws nothing from taking (and creating) one balance row per customer."""
    wanted = sorted(set(pairs))
    if not wanted:
        return {}
    # NOTE: ORDER BY under FOR UPDATE: rows are locked as they leave the sort, so in (customer_id, currency)
    # order, as the one-row-at-a-time loop did; a row locked meanwhile is re-checked (balance_minor > 0).
    rows = conn.execute(sa.text(
        "SELECT b.customer_id, b.currency, b.balance_minor FROM customer_balances b "
        "JOIN unnest(CAST(:customers AS text[]), CAST(:currencies AS text[])) AS w(customer_id, currency) "
        "ON b.customer_id = w.customer_id AND b.currency = w.currency "
        "WHERE b.balance_minor > 0 ORDER BY b.customer_id, b.currency FOR UPDATE OF b"),
        {"customers": [c for c, _ in wanted], "currencies": [cur for _, cur in wanted]}).all()
    out: dict[Pair, int] = dict.fromkeys(wanted, 0)
    out.update({(r.customer_id, r.currency): int(r.balance_minor) for r in rows})
    return out


def apply_entries(conn: sa.Connection, entries: Sequence[BalanceEntry]) -> set[str]:
    """`apply_entry` for many entries in three statements: the entries inserted under their ids, and each
    balance moved once by the sum of its entries really inserted. Returns the ids really inserted."""
    if not entries:
        return set()
    written = set(conn.execute(insert(customer_balance_entries).values([{
        "entry_id": e.entry_id, "customer_id": e.customer_id, "currency": e.currency,
        "amount_minor": e.amount_minor, "kind": e.kind.value, "invoice_id": e.invoice_id,
        "credit_note_id": e.credit_note_id, "description": e.description, "occurred_at": e.occurred_at}
        for e in entries]).on_conflict_do_nothing(index_elements=["entry_id"])
        .returning(customer_balance_entries.c.entry_id)).scalars().all())
    delta: dict[Pair, int] = {}
    for e in entries:
        if e.entry_id in written:
            delta[(e.customer_id, e.currency)] = delta.get((e.customer_id, e.currency), 0) + e.amount_minor
    moved = sorted(pair for pair, amount in delta.items() if amount)
    if moved:
        conn.execute(insert(customer_balances).values(
            [{"customer_id": c, "currency": cur, "balance_minor": 0} for c, cur in moved]).on_conflict_do_nothing())
        pairs = {"customers": [c for c, _ in moved], "currencies": [cur for _, cur in moved]}
        # the rows locked in (customer_id, currency) order first, so two writers crediting several never deadlock
        conn.execute(sa.text(
            "SELECT 1 FROM customer_balances b JOIN unnest(CAST(:customers AS text[]), CAST(:currencies AS text[])) "
            "AS w(customer_id, currency) ON b.customer_id = w.customer_id AND b.currency = w.currency "
            "ORDER BY b.customer_id, b.currency FOR UPDATE OF b"), pairs)
        conn.execute(sa.text(
            "UPDATE customer_balances b SET balance_minor = b.balance_minor + d.amount, updated_at = now() "
            "FROM unnest(CAST(:customers AS text[]), CAST(:currencies AS text[]), CAST(:amounts AS bigint[])) "
            "AS d(customer_id, currency, amount) WHERE b.customer_id = d.customer_id AND b.currency = d.currency"),
            pairs | {"amounts": [delta[p] for p in moved]})
    return written


def apply_entry(conn: sa.Connection, entry: BalanceEntry) -> bool:
    """Append `entry` and move its balance by its amount; False (nothing moved) when the entry id exists."""
    written = conn.execute(insert(customer_balance_entries).values(
        entry_id=entry.entry_id, customer_id=entry.customer_id, currency=entry.currency,
        amount_minor=entry.amount_minor, kind=entry.kind.value, invoice_id=entry.invoice_id,
        credit_note_id=entry.credit_note_id, description=entry.description, occurred_at=entry.occurred_at,
    ).on_conflict_do_nothing(index_elements=["entry_id"]).returning(customer_balance_entries.c.entry_id)
    ).scalar_one_or_none()
    if written is None:
        return False
    # NOTE: not an upsert of the delta: the CHECK would judge the proposed row (a debit alone) before the
    # conflict is seen; the row is made at 0, then moved.
    conn.execute(insert(customer_balances).values(customer_id=entry.customer_id, currency=entry.currency,
                                                  balance_minor=0).on_conflict_do_nothing())
    conn.execute(sa.update(customer_balances)
                 .where(customer_balances.c.customer_id == entry.customer_id,
                        customer_balances.c.currency == entry.currency)
                 .values(balance_minor=customer_balances.c.balance_minor + entry.amount_minor,
                         updated_at=sa.func.now()))
    return True


def balances_of(conn: sa.Connection, customer_id: str) -> list[Any]:
    """(currency, balance_minor, updated_at) rows of a customer, by currency (no lock)."""
    return list(conn.execute(
        sa.select(customer_balances.c.currency, customer_balances.c.balance_minor, customer_balances.c.updated_at)
        .where(customer_balances.c.customer_id == customer_id).order_by(customer_balances.c.currency)).all())


def entries_of(conn: sa.Connection, customer_id: str, *, after_seq: int | None, limit: int,
               currency: str | None = None) -> Sequence[Any]:
    """A page of a customer's entries in write order (keyset on `seq`)."""
    e = customer_balance_entries
    query = sa.select(e).where(e.c.customer_id == customer_id)
    if currency is not None:
        query = query.where(e.c.currency == currency)
    if after_seq is not None:
        query = query.where(e.c.seq > after_seq)
    return list(conn.execute(query.order_by(e.c.seq).limit(limit)).all())


def entry(conn: sa.Connection, entry_id: str) -> Any | None:
    """The stored entry row, or None."""
    return conn.execute(sa.select(customer_balance_entries)
                        .where(customer_balance_entries.c.entry_id == entry_id)).one_or_none()

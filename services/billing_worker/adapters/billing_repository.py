"""Persistence of the billing aggregates: rows <-> domain objects, in batches, inside the caller's transaction.

Every function takes the open connection of the batch transaction (worker-core's processor) and never
commits. Reads and writes are set-based (one statement per table per batch) because a billing run closes
tens of thousands of periods at once. Identity is held by constraints (schema/billing.py): an insert that
hits an existing identity is a no-op or an error, never a second row.
"""

from __future__ import annotations

import operator
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, time
from decimal import Decimal
from typing import Any

import orjson
import sqlalchemy as sa
from psycopg.adapt import Buffer, Dumper
from sqlalchemy.dialects.postgresql import insert

from services.billing_worker.service_layer.model import DEFAULT_ISSUER, InvoiceToStore, LedgerState, SubscriptionState
from shared.adapters.postgres import billing_snapshots as snapshots
from shared.adapters.postgres.match import one_of
from shared.adapters.postgres.rows import plain_rows
from shared.adapters.postgres.schema.billing import (
    billing_audit_log,
    coupon_attachments,
    coupon_redemptions,
    credit_entries,
    credit_grants,
    invoice_lines,
    invoice_number_sequences,
    invoices,
    subscription_history,
    subscription_periods,
    subscriptions,
)
from shared.adapters.postgres.schema.core import command_outcomes
from shared.domain.calendar import Period
from shared.domain.coupons import CouponRedemption
from shared.domain.events import DomainEvent, event_payload
from shared.domain.ids import IDS, CustomerId, InvoiceId, SubscriptionId, event_uuid
from shared.domain.invoice import (
    Invoice,
    InvoiceKey,
    InvoiceLine,
    InvoiceReason,
    InvoiceStatus,
    LineKind,
    format_invoice_number,
)
from shared.domain.ledger import CreditGrant, EntryKind
from shared.domain.money import Money, UnitPrice, sum_money

DEFAULT_INVOICE_PREFIX = "OLB"


# ---------------------------------------------------------------------------------------- bulk writes


class _JsonText(Dumper):
    """A dict or list in a text COPY: its JSON (the column is json/jsonb)."""

    def dump(self, obj: Any) -> Buffer | None:
        return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)


class _StrText(Dumper):
    """A UUID or a time in a text COPY: `str()` of it (the form a text column stores, which uuid/time parse)."""

    def dump(self, obj: Any) -> Buffer | None:
        return str(obj).encode()


class _InstantText(Dumper):
    """A datetime in a text COPY: `str()` of it, as psycopg writes it, each distinct instant formatted once per
    COPY (a run's rows repeat a few instants thousands of times, and formatting one costs more than the rest of
    its row). Keyed with its tzinfo: equal instants in two zones are written each in its own."""

    def __init__(self, cls: type, context: Any = None) -> None:
        super().__init__(cls, context)
        self._text: dict[tuple[datetime, Any], bytes] = {}

    def dump(self, obj: datetime) -> Buffer | None:
        key = (obj, obj.tzinfo)
        text = self._text.get(key)
        if text is None:
            text = self._text[key] = str(obj).encode()
        return text


COPY_THRESHOLD = 200


def bulk_insert(conn: sa.Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]], *,
                ignore_conflicts_on: Sequence[str] | str | None = None, returning: str | None = None) -> list[Any]:
    """Insert many rows in a few round trips: one multi-row INSERT for a few rows; for many (a billing run),
    COPY into the table, or, when conflicts are skipped or a column returned, COPY into a temporary table plus
    one INSERT ... SELECT. `ignore_conflicts_on` (index columns, or a constraint name) makes rows hitting an
    existing identity no-ops; `returning` names a column to return for the rows really inserted."""
    if not rows:
        return []
    if len(rows) < COPY_THRESHOLD:
        stmt = insert(table).values(list(rows))
        if isinstance(ignore_conflicts_on, str):
            stmt = stmt.on_conflict_do_nothing(constraint=ignore_conflicts_on)
        elif ignore_conflicts_on is not None:
            stmt = stmt.on_conflict_do_nothing(index_elements=list(ignore_conflicts_on) or None)
        if returning:
            return list(conn.execute(stmt.returning(table.c[returning])).scalars().all())
        conn.execute(stmt)
        return []
    if ignore_conflicts_on is None and not returning:
        # Nothing to skip or return: the rows go straight into the table (through a temporary table, each row
        # was written twice and read once more; the INSERT ... SELECT cost ~30 µs per ledger entry).
        copy_rows(conn, table.name, list(rows[0]), rows)
        return []
    temp, columns = copy_to_temp(conn, table, rows)
    column_list = ", ".join(f'"{c}"' for c in columns)
    conflict = ""
    if isinstance(ignore_conflicts_on, str):
        conflict = f"ON CONFLICT ON CONSTRAINT {ignore_conflicts_on} DO NOTHING"
    elif ignore_conflicts_on is not None:
        conflict = f"ON CONFLICT ({', '.join(ignore_conflicts_on)}) DO NOTHING" if ignore_conflicts_on else \
            "ON CONFLICT DO NOTHING"
    result = conn.execute(sa.text(
        f"INSERT INTO {table.name} ({column_list}) SELECT {column_list} FROM {temp} {conflict} "
        + (f"RETURNING {returning}" if returning else "")))
    out = list(result.scalars().all()) if returning else []
    conn.execute(sa.text(f"DELETE FROM {temp}"))  # not TRUNCATE: cheap inside long, savepointed batches
    return out


def copy_to_temp(conn: sa.Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> tuple[str, list[str]]:
    """COPY `rows` (all with the same keys) into a temporary table shaped like `table`'s columns; returns its
    name and columns. The temporary table lives until the transaction ends; the caller empties it after use
    (``DELETE FROM``) so the next batch of the same transaction starts empty."""
    columns = list(rows[0])
    temp = f"_bulk_{table.name}_{uuid.uuid5(IDS, ','.join(columns)).hex[:8]}"
    column_list = ", ".join(f'"{c}"' for c in columns)
    conn.execute(sa.text(f"CREATE TEMP TABLE IF NOT EXISTS {temp} ON COMMIT DROP AS "
                         f"SELECT {column_list} FROM {table.name} WITH NO DATA"))
    copy_rows(conn, temp, columns, rows)
    return temp, columns


def copy_rows(conn: sa.Connection, table_name: str, columns: Sequence[str],
              rows: Sequence[Mapping[str, Any]]) -> None:
    """COPY the `columns` of `rows` into `table_name`, in the rows' order."""
    column_list = ", ".join(f'"{c}"' for c in columns)
    dbapi: Any = conn.connection.dbapi_connection  # psycopg 3: COPY is not in the DB-API
    values = operator.itemgetter(*columns)
    with dbapi.cursor() as cur:
        # NOTE: the values go as they are and psycopg picks each one's text form by its type (in C); the types
        # whose default form is not the column's are re-mapped for this cursor only (a list is JSON here, not
        # an array; a UUID keeps its dashes), instead of a Python test of every value.
        for cls, dumper in ((dict, _JsonText), (list, _JsonText), (uuid.UUID, _StrText), (time, _StrText),
                            (datetime, _InstantText)):
            cur.adapters.register_dumper(cls, dumper)
        with cur.copy(f"COPY {table_name} ({column_list}) FROM STDIN") as copy:
            if len(columns) == 1:
                for row in rows:
                    copy.write_row((values(row),))
            else:
                for row in rows:
                    copy.write_row(values(row))


# ----------------------------------------------------------------------------------------- subscriptions


def _utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None else None


def _state_of(row: Any) -> SubscriptionState:
    return SubscriptionState(snapshots.subscription_of_row(row), row.currency, row.timezone, row.tax_rate_bps,
                             row.version)


def _row_of(state: SubscriptionState) -> dict[str, Any]:
    sub = state.subscription
    return {
        "subscription_id": sub.id, "customer_id": sub.customer_id, "plan_id": sub.plan_id,
        "status": sub.status.value, "seats": sub.seats, "interval": sub.interval.value,
        "pending_plan_id": sub.pending_plan_id, "pending_seats": sub.pending_seats,
        "currency": state.currency, "timezone": state.timezone, "tax_rate_bps": state.tax_rate_bps,
        "anchor_day": sub.anchor.day, "anchor_month": sub.anchor.month, "anchor_time": sub.anchor.time_of_day,
        "current_period_start": sub.current_period.start, "current_period_end": sub.current_period.end,
        "started_at": sub.started_at, "trial_end": sub.trial_end,
        "cancel_at_period_end": sub.cancel_at_period_end, "cancelled_at": sub.cancelled_at,
        "cancel_reason": sub.cancel_reason, "paused_at": sub.paused_at,
        "payment_method_id": sub.payment_method_id,
        "coupon_id": sub.coupon.coupon_id if sub.coupon else None,
        "coupon_redeemed_at": sub.coupon.redeemed_at if sub.coupon else None,
        "coupon_invoice_keys": sorted(sub.coupon.invoice_keys) if sub.coupon else [],
        "carried_credit_minor": sub.carried_credit_minor, "version": sub.version,
    }


def load_subscriptions(conn: sa.Connection, ids: Iterable[str]) -> dict[str, SubscriptionState]:
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    rows = plain_rows(conn.execute(sa.select(subscriptions).where(one_of(subscriptions.c.subscription_id, wanted))))
    return {row.subscription_id: _state_of(row) for row in rows}


def load_subscription(conn: sa.Connection, subscription_id: str) -> SubscriptionState | None:
    return load_subscriptions(conn, [subscription_id]).get(subscription_id)


def save_subscriptions(conn: sa.Connection, states: Sequence[SubscriptionState]) -> None:
    """Insert the new subscriptions and update the others (one statement each for the whole batch)."""
    new = [_row_of(s) for s in states if s.stored_version is None]
    stored = [_row_of(s) for s in states if s.stored_version is not None]
    if new:
        bulk_insert(conn, subscriptions, new)
    if len(stored) >= COPY_THRESHOLD:
        # a billing run: COPY the new figures and move every row in one UPDATE ... FROM
        temp, columns = copy_to_temp(conn, subscriptions, stored)
        assignments = ", ".join(f'"{c}" = t."{c}"' for c in columns if c != "subscription_id")
        conn.execute(sa.text(f"UPDATE subscriptions s SET {assignments}, updated_at = now() FROM {temp} t "
                             "WHERE s.subscription_id = t.subscription_id"))
        conn.execute(sa.text(f"DELETE FROM {temp}"))
    elif stored:
        columns = [c for c in stored[0] if c != "subscription_id"]
        conn.execute(sa.update(subscriptions)
                     .where(subscriptions.c.subscription_id == sa.bindparam("b_id"))
                     .values({c: sa.bindparam(f"v_{c}") for c in columns} | {"updated_at": sa.func.now()}),
                     [{"b_id": row["subscription_id"], **{f"v_{c}": row[c] for c in columns}} for row in stored])
    for s in states:
        s.stored_version = s.subscription.version


# ----------------------------------------------------------------------------------------- credit ledger


def load_ledgers(conn: sa.Connection, states: Sequence[SubscriptionState],
                 kinds: Mapping[str, bool], *, unsettled_only: bool = False) -> dict[str, LedgerState]:
    """The credit ledger of each subscription, replayed from its stored grants and entries (with
    `unsettled_only`, from its grants not settled yet: `billing_snapshots.ledger_rows`)."""
    by_id = {s.id: s for s in states}
    if not by_id:
        return {}
    grants_of, entries_of = snapshots.ledger_rows(conn, by_id, unsettled_only=unsettled_only)
    out: dict[str, LedgerState] = {}
    for sub_id, state in by_id.items():
        rows, entries = grants_of.get(sub_id, []), entries_of.get(sub_id, [])
        ledger = snapshots.ledger_of_rows(sub_id, state.currency, state.timezone, kinds, rows, entries)
        out[sub_id] = LedgerState(ledger, len(entries), {g.grant_id for g in rows})
    return out


def ledger_rows(states: Mapping[str, LedgerState], customer_of: Mapping[str, str], at: datetime,
                invoice_of_key: Mapping[str, str] | None = None) -> tuple[list[dict[str, Any]],
                                                                          list[dict[str, Any]]]:
    """The grant and entry rows the ledgers appended since they were loaded (and mark them stored).

    `invoice_of_key` maps an invoice key (str) to its invoice id: rating's consumption references start
    with the invoice key, so each consumption entry is linked to the invoice that drew it.
    """
    grant_rows: list[dict[str, Any]] = []
    entry_rows: list[dict[str, Any]] = []
    for sub_id, state in states.items():
        ledger = state.ledger
        entries = ledger.entries
        new_entries = entries[state.stored_entries:]
        if not new_entries:
            continue
        for entry in new_entries:
            if entry.kind is EntryKind.GRANT and entry.grant_id not in state.stored_grants:
                grant = next(g for g in ledger.grants(entry.meter) if g.grant_id == entry.grant_id)
                grant_rows.append(_grant_row(sub_id, customer_of[sub_id], grant, at))
                state.stored_grants.add(grant.grant_id)
            invoice_id = None
            if invoice_of_key and entry.reference:
                invoice_id = invoice_of_key.get(entry.reference.split("|usage|")[0].split("|adjustment|")[0])
            entry_rows.append({
                "entry_id": entry.entry_id, "grant_id": entry.grant_id, "subscription_id": sub_id,
                "kind": entry.kind.value,
                "amount_minor": entry.amount.amount_minor if isinstance(entry.amount, Money) else None,
                "units": entry.amount if isinstance(entry.amount, Decimal) else None,
                "invoice_id": invoice_id, "reference": entry.reference, "occurred_at": entry.at})
        state.stored_entries = len(entries)
    return grant_rows, entry_rows


def _grant_row(sub_id: str, customer_id: str, grant: CreditGrant, at: datetime) -> dict[str, Any]:
    money = grant.amount if isinstance(grant.amount, Money) else None
    return {"grant_id": grant.grant_id, "subscription_id": sub_id, "customer_id": customer_id,
            "meter_id": grant.meter, "source": grant.source.value,
            "amount_minor": money.amount_minor if money else None, "currency": money.currency if money else None,
            "units": grant.amount if isinstance(grant.amount, Decimal) else None, "priority": grant.priority,
            "effective_at": grant.effective_at, "expires_at": grant.expires_at, "granted_at": at}


def save_ledger_rows(conn: sa.Connection, grant_rows: list[dict[str, Any]],
                     entry_rows: list[dict[str, Any]], settled: Sequence[tuple[str, datetime]] = ()) -> None:
    """Insert new grants and entries; `settled` (subscription, instant) marks every grant of the
    subscription that expired by then as settled (its expiry was written off, or nothing was left)."""
    if grant_rows:
        bulk_insert(conn, credit_grants, grant_rows)
    if entry_rows:
        bulk_insert(conn, credit_entries, entry_rows)
    if settled:
        conn.execute(sa.text(
            "UPDATE credit_grants g SET settled_at = v.at "
            "FROM unnest(CAST(:subs AS text[]), CAST(:ats AS timestamptz[])) AS v(s, at) "
            "WHERE g.subscription_id = v.s AND g.expires_at <= v.at AND g.settled_at IS NULL"),
            {"subs": [s for s, _ in settled], "ats": [at for _, at in settled]})


# ---------------------------------------------------------------------------------------------- invoices


def allocate_invoice_numbers(conn: sa.Connection, count: int, *, issuer: str = DEFAULT_ISSUER,
                             prefix: str = DEFAULT_INVOICE_PREFIX) -> list[str]:
    """`count` consecutive numbers of `issuer`, taken from its counter row in this transaction.

    Gapless: the counter moves only if the transaction commits, and the row lock it takes serialises
    concurrent finalisations of the same issuer until then.
    """
    if count <= 0:
        return []
    conn.execute(insert(invoice_number_sequences).values(issuer=issuer, prefix=prefix, next_number=1)
                 .on_conflict_do_nothing(index_elements=["issuer"]))
    row = conn.execute(sa.update(invoice_number_sequences).where(invoice_number_sequences.c.issuer == issuer)
                       .values(next_number=invoice_number_sequences.c.next_number + count,
                               updated_at=sa.func.now())
                       .returning(invoice_number_sequences.c.next_number, invoice_number_sequences.c.prefix)).one()
    first = row.next_number - count
    return [format_invoice_number(row.prefix, first + i) for i in range(count)]


def _line_row(invoice: Invoice, line_no: int, line: InvoiceLine, plan_id: str | None) -> dict[str, Any]:
    return {"invoice_id": invoice.id, "line_no": line_no, "kind": line.kind.value,
            "description": line.description, "amount_minor": line.amount.amount_minor,
            "currency": line.amount.currency, "quantity": line.quantity,
            "unit_price": line.unit_price.amount if line.unit_price else None, "meter_id": line.meter_id,
            "plan_id": plan_id if line.kind in (LineKind.FEE, LineKind.PRORATION) else None,
            "period_start": line.period.start if line.period else None,
            "period_end": line.period.end if line.period else None, "proration": line.proration,
            "taxable": line.is_taxable, "source": None}


def _sum_kind(invoice: Invoice, kind: LineKind) -> int:
    return sum_money((line.amount for line in invoice.lines_of(kind)), invoice.currency).amount_minor


def invoice_row(item: InvoiceToStore) -> dict[str, Any]:
    inv = item.invoice
    return {
        "invoice_id": inv.id, "subscription_id": inv.subscription_id, "customer_id": inv.customer_id,
        "kind": inv.key.reason.value, "period_start": inv.period.start, "period_end": inv.period.end,
        "status": inv.status.value, "issuer": item.issuer, "number": inv.number,
        "number_seq": int(inv.number.rsplit("-", 1)[1]) if inv.number else None, "currency": inv.currency,
        "subtotal_minor": inv.subtotal.amount_minor, "discount_minor": inv.discount.amount_minor,
        "credits_applied_minor": inv.credits_applied.amount_minor, "tax_minor": inv.tax.amount_minor,
        "total_minor": inv.total.amount_minor, "amount_due_minor": inv.amount_due.amount_minor,
        "balance_applied_minor": inv.balance_applied_minor,
        "amount_paid_minor": inv.amount_paid_minor,
        "tax_rate_bps": inv.tax_rate_bps, "plan_id": item.plan_id, "payment_method_id": item.payment_method_id,
        "issued_at": inv.finalized_at, "due_at": inv.finalized_at, "paid_at": inv.paid_at,
        "finalizes_at": item.finalizes_at,
    }


def insert_invoices(conn: sa.Connection, items: Sequence[InvoiceToStore]) -> set[str]:
    """Store finalised invoices with their lines; returns the ids really inserted (an invoice whose
    identity already exists is not stored twice)."""
    if not items:
        return set()
    # NOTE: any conflict (no target): the identity is a partial unique index (manual invoices excluded), which
    # ON CONFLICT ON CONSTRAINT cannot name; a row not inserted for any reason makes the caller refuse the batch.
    inserted = set(bulk_insert(conn, invoices, [invoice_row(i) for i in items],
                               ignore_conflicts_on=[], returning="invoice_id"))
    lines = [_line_row(i.invoice, n, line, i.plan_id) for i in items if i.invoice.id in inserted
             for n, line in enumerate(i.invoice.lines, start=1)]
    bulk_insert(conn, invoice_lines, lines)
    return inserted


def store_finalised_drafts(conn: sa.Connection, items: Sequence[InvoiceToStore]) -> set[str]:
    """Drafts stored earlier, now finalised: their rows and lines replaced; returns the ids really updated
    (a row no longer draft is left alone, and the caller refuses the batch)."""
    updated: set[str] = set()
    for item in items:
        values = {k: v for k, v in invoice_row(item).items()
                  if k not in ("invoice_id", "subscription_id", "customer_id", "kind", "period_start", "period_end",
                               "finalizes_at")}
        found = conn.execute(sa.update(invoices).where(invoices.c.invoice_id == item.invoice.id,
                                                       invoices.c.status == "draft")
                             .values(**values, updated_at=sa.func.now()).returning(invoices.c.invoice_id)).first()
        if found is None:
            continue
        updated.add(item.invoice.id)
        conn.execute(sa.delete(invoice_lines).where(invoice_lines.c.invoice_id == item.invoice.id))
        bulk_insert(conn, invoice_lines, [_line_row(item.invoice, n, line, item.plan_id)
                                          for n, line in enumerate(item.invoice.lines, start=1)])
    return updated


def load_invoice(conn: sa.Connection, invoice_id: str) -> tuple[Invoice, Any] | None:
    """The invoice as a domain object (with its lines) and its row."""
    return load_invoices(conn, [invoice_id]).get(invoice_id)


def load_invoices(conn: sa.Connection, invoice_ids: Iterable[str]) -> dict[str, tuple[Invoice, Any]]:
    """Many invoices (domain object with its lines, and row) in two queries, by invoice id."""
    wanted = sorted(set(invoice_ids))
    if not wanted:
        return {}
    rows = conn.execute(sa.select(invoices).where(one_of(invoices.c.invoice_id, wanted))).all()
    if not rows:
        return {}
    lines_of: dict[str, list[InvoiceLine]] = {}
    found = [row.invoice_id for row in rows]
    for r in conn.execute(sa.select(invoice_lines).where(one_of(invoice_lines.c.invoice_id, found))
                          .order_by(invoice_lines.c.invoice_id, invoice_lines.c.line_no)):
        lines_of.setdefault(r.invoice_id, []).append(InvoiceLine(
            kind=LineKind(r.kind), description=r.description, amount=Money(r.amount_minor, r.currency),
            quantity=Decimal(r.quantity) if r.quantity is not None else Decimal(1),
            unit_price=UnitPrice(Decimal(r.unit_price), r.currency) if r.unit_price is not None else None,
            period=Period(r.period_start, r.period_end) if r.period_start and r.period_end else None,
            proration=r.proration, meter_id=r.meter_id, taxable=r.taxable))
    out: dict[str, tuple[Invoice, Any]] = {}
    for row in rows:
        invoice = Invoice(
            id=InvoiceId(row.invoice_id),
            key=InvoiceKey(SubscriptionId(row.subscription_id), InvoiceReason(row.kind),
                           Period(row.period_start, row.period_end)),
            customer_id=CustomerId(row.customer_id), currency=row.currency,
            # a draft's instant is its close's: the end of the period it bills
            created_at=row.issued_at or (row.period_end if row.status == "draft" else row.created_at),
            status=InvoiceStatus(row.status),
            lines=tuple(lines_of.get(row.invoice_id, ())), tax_rate_bps=row.tax_rate_bps, number=row.number,
            finalized_at=_utc(row.issued_at), paid_at=_utc(row.paid_at), amount_paid_minor=row.amount_paid_minor,
            version=1)
        invoice.balance_applied_minor = row.balance_applied_minor
        invoice.pre_payment_credit_minor = row.pre_payment_credit_minor
        out[row.invoice_id] = (invoice, row)
    return out


def save_invoice_status(conn: sa.Connection, invoice: Invoice, *, provider_ref: str | None = None,
                        at: datetime | None = None) -> None:
    values: dict[str, Any] = {"status": invoice.status.value, "updated_at": sa.func.now()}
    if invoice.status is InvoiceStatus.PAID:
        values |= {"paid_at": invoice.paid_at, "amount_paid_minor": invoice.amount_paid_minor}
        if provider_ref:
            values["provider_ref"] = provider_ref
    elif invoice.status is InvoiceStatus.VOID:
        values["voided_at"] = at
    elif invoice.status is InvoiceStatus.UNCOLLECTIBLE:
        values["marked_uncollectible_at"] = at
    conn.execute(sa.update(invoices).where(invoices.c.invoice_id == invoice.id).values(values))


_SAVE_PAID = sa.text("""
UPDATE invoices AS i
SET status = 'paid', paid_at = v.paid_at, amount_paid_minor = v.amount_paid_minor,
    provider_ref = coalesce(v.provider_ref, i.provider_ref), updated_at = now()
FROM unnest(CAST(:ids AS text[]), CAST(:paid_at AS timestamptz[]), CAST(:amounts AS bigint[]),
            CAST(:refs AS text[])) AS v(invoice_id, paid_at, amount_paid_minor, provider_ref)
WHERE i.invoice_id = v.invoice_id
""")


def save_paid_invoices(conn: sa.Connection, paid: Sequence[tuple[Invoice, str | None]]) -> None:
    """`save_invoice_status` of many invoices just paid, (invoice, provider ref), in one statement whatever
    their number (the same text each time: prepared once per connection). A provider ref that is None or
    empty keeps the stored one."""
    if not paid:
        return
    conn.execute(_SAVE_PAID, {"ids": [i.id for i, _ in paid], "paid_at": [i.paid_at for i, _ in paid],
                              "amounts": [i.amount_paid_minor for i, _ in paid],
                              "refs": [ref or None for _, ref in paid]})


def record_failed_attempt(conn: sa.Connection, invoice_id: str, decline_code: str | None) -> None:
    conn.execute(sa.update(invoices).where(invoices.c.invoice_id == invoice_id).values(
        attempt_count=invoices.c.attempt_count + 1, last_decline_code=decline_code, updated_at=sa.func.now()))


def open_invoices_of(conn: sa.Connection, subscription_id: str) -> list[str]:
    return list(conn.execute(sa.select(invoices.c.invoice_id).where(
        invoices.c.subscription_id == subscription_id,
        invoices.c.status.in_(("open", "uncollectible")))).scalars().all())


def audit_invoice_totals(conn: sa.Connection) -> list[str]:
    """Invoices whose stored total differs from the sum of their lines (should always be empty)."""
    line_sum = (sa.select(invoice_lines.c.invoice_id, sa.func.sum(invoice_lines.c.amount_minor).label("s"))
                .group_by(invoice_lines.c.invoice_id).subquery())
    return list(conn.execute(
        sa.select(invoices.c.invoice_id).select_from(invoices.outerjoin(
            line_sum, line_sum.c.invoice_id == invoices.c.invoice_id))
        .where(sa.func.coalesce(line_sum.c.s, 0) != invoices.c.total_minor)).scalars().all())


# ------------------------------------------------------------------------------- coupons, periods, history


# A transaction-scoped advisory lock per (schema, coupon): two int4 keys, a key space apart from the one-bigint
# locks of the outbox relay and the scheduler. A hash collision between two coupons only serialises them too.
_COUPON_LOCK = sa.text("SELECT pg_advisory_xact_lock(hashtext(current_schema()), hashtext(:coupon_id))")


def coupon_times_redeemed(conn: sa.Connection, coupon_id: str, *, lock: bool = True) -> int:
    """How many subscriptions redeemed the coupon, counted under a lock on it that the caller's transaction
    holds until it ends, so `max_redemptions` holds across workers (issue 14; it was count-then-insert).

    Why it holds: the count and the attachment that takes the slot (`attach_coupon`, an immediate write of
    the create) are in the same transaction, the batch's; a second transaction counting the same coupon waits
    here until the first commits or rolls back, and since the worker's transactions are READ COMMITTED its
    count, a statement started after the lock is granted, sees the first one's attachment. A refused create
    rolls its savepoint back, attachment included. Two batches that lock two coupons in opposite orders
    deadlock; PostgreSQL detects it and aborts one with 40P01, which `shared/adapters/postgres/errors.py`
    classifies as transient, so that batch is retried. The price: the creates redeeming one limited coupon
    run one transaction at a time across partitions. `lock=False` (a coupon without `max_redemptions`,
    whose count decides nothing) takes no lock."""
    if lock:
        conn.execute(_COUPON_LOCK, {"coupon_id": coupon_id})
    return int(conn.execute(sa.select(sa.func.count()).select_from(coupon_attachments)
                            .where(coupon_attachments.c.coupon_id == coupon_id)).scalar_one())


def attach_coupon(conn: sa.Connection, coupon_id: str, subscription_id: str, at: datetime) -> None:
    conn.execute(insert(coupon_attachments).values(coupon_id=coupon_id, subscription_id=subscription_id,
                                                   attached_at=at).on_conflict_do_nothing())


_ROWS_PER_STATEMENT = 5_000  # 7 columns: well under PostgreSQL's 65,535 parameters per statement


def insert_redemptions(conn: sa.Connection, rows: Sequence[tuple[CouponRedemption, str, str, datetime]]) -> None:
    """(redemption, subscription id, invoice id, at): counted once per key, whatever the replays. A draft
    re-rated at its finalisation (late usage in its grace) may change the amount of its invoice's redemption:
    the amount is the one on the invoice, the first instant stays."""
    by_key: dict[str, dict[str, Any]] = {}
    for r, sub, inv, at in rows:  # a key twice in one run: its first instant, its last amount (as row by row)
        first = by_key.setdefault(r.key, {"redemption_key": r.key, "coupon_id": r.coupon_id, "subscription_id": sub,
                                          "invoice_id": inv, "currency": r.amount.currency, "redeemed_at": at})
        first["amount_minor"] = r.amount.amount_minor
    values = list(by_key.values())
    if len(values) >= COPY_THRESHOLD:
        # a billing run: COPY, then one upsert (a multi-row VALUES of thousands of rows costs more to compile
        # and to send than to write)
        temp, columns = copy_to_temp(conn, coupon_redemptions, values)
        column_list = ", ".join(columns)
        conn.execute(sa.text(
            f"INSERT INTO coupon_redemptions ({column_list}) SELECT {column_list} FROM {temp} "
            "ON CONFLICT (redemption_key) DO UPDATE SET amount_minor = excluded.amount_minor"))
        conn.execute(sa.text(f"DELETE FROM {temp}"))
        return
    for start in range(0, len(values), _ROWS_PER_STATEMENT):  # one multi-row statement per 5,000 redemptions
        stmt = insert(coupon_redemptions).values(values[start:start + _ROWS_PER_STATEMENT])
        conn.execute(stmt.on_conflict_do_update(index_elements=["redemption_key"],
                                                set_={"amount_minor": stmt.excluded.amount_minor}))


_PERIOD_COLUMNS = ("subscription_id", "period_start", "period_end", "plan_id", "seats", "invoice_id", "closed_at")


def record_periods(conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Upsert subscription periods: (subscription_id, period_start, period_end, plan_id, seats[, invoice_id,
    closed_at])."""
    if not rows:
        return
    full = [{"invoice_id": None, "closed_at": None, **r} for r in rows]
    if len(full) >= COPY_THRESHOLD and len({(r["subscription_id"], r["period_start"]) for r in full}) == len(full):
        # a billing run (each key once: one INSERT ... ON CONFLICT may not touch a row twice)
        keyed = [{c: r[c] for c in _PERIOD_COLUMNS} for r in full]
        temp, columns = copy_to_temp(conn, subscription_periods, keyed)
        column_list = ", ".join(columns)
        conn.execute(sa.text(
            f"INSERT INTO subscription_periods ({column_list}) SELECT {column_list} FROM {temp} "
            "ON CONFLICT (subscription_id, period_start) DO UPDATE SET "
            "invoice_id = coalesce(excluded.invoice_id, subscription_periods.invoice_id), "
            "closed_at = coalesce(excluded.closed_at, subscription_periods.closed_at), "
            "period_end = excluded.period_end"))
        conn.execute(sa.text(f"DELETE FROM {temp}"))
        return
    stmt = insert(subscription_periods)
    conn.execute(stmt.on_conflict_do_update(
        index_elements=["subscription_id", "period_start"],
        set_={"invoice_id": sa.func.coalesce(stmt.excluded.invoice_id, subscription_periods.c.invoice_id),
              "closed_at": sa.func.coalesce(stmt.excluded.closed_at, subscription_periods.c.closed_at),
              "period_end": stmt.excluded.period_end}), full)


def history_rows(events: Iterable[DomainEvent], command_id: str | None) -> list[dict[str, Any]]:
    rows = []
    for event in events:
        payload = event_payload(event)
        rows.append({
            "subscription_id": event.subscription_id,
            "event_id": str(event_uuid(event.subscription_id, "history", event.version, event.name,
                                       payload.get("invoice_id", ""))),
            "event_type": event.name, "occurred_at": event.occurred_at,
            "old_status": payload.get("from_status"), "new_status": payload.get("to_status") or payload.get("status"),
            "plan_id": payload.get("plan_id") or payload.get("to_plan_id"),
            "seats": payload.get("seats") or payload.get("to_seats"), "detail": payload, "command_id": command_id})
    return rows


def answered_commands(conn: sa.Connection, command_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """The commands among `command_ids` whose outcome is already stored."""
    if not command_ids:
        return set()
    return set(conn.execute(sa.select(command_outcomes.c.command_id)
                            .where(one_of(command_outcomes.c.command_id, command_ids))).scalars().all())


def append_history(conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> None:
    bulk_insert(conn, subscription_history, rows, ignore_conflicts_on=["event_id"])


def append_audit(conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Rows of (occurred_at, actor, action, entity_type, entity_id, subscription_id, customer_id,
    command_id, detail); append-only."""
    bulk_insert(conn, billing_audit_log, [{"detail": {}, "subscription_id": None, "customer_id": None,
                                           "command_id": None, **r} for r in rows])

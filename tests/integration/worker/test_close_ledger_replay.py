"""A period close replays only the grants not settled yet (issue 17): a settled grant expired and what was left
of it was written off, so it holds nothing and is never drawn from again. Without this every close replayed the
subscription's whole history (each period's grants and entries), so each close cost more than the one before.

The money must not move: the same subscriptions closed over four months, with usage, late usage of a closed
period and carried-over grants, give the same invoices and ledgers with the narrowed replay as with the whole
ledger replayed."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from services.billing_worker.adapters import billing_repository as repo
from services.billing_worker.adapters.usage import MeterMap, UsageMaterializer
from services.billing_worker.bootstrap import billing_handlers, message_bus, sql_unit_of_work
from shared.adapters.catalog_file import load_default_catalog
from shared.adapters.postgres import billing_snapshots
from shared.contracts.envelope import new_envelope
from shared.contracts.messages import ClosePeriod, CreateSubscription

pytestmark = pytest.mark.integration

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
MONTHS = [datetime(2026, m, 1, tzinfo=UTC) for m in (2, 3, 4, 5)]
CATALOG = load_default_catalog()
BUS = message_bus(billing_handlers())
UOW = sql_unit_of_work(CATALOG)
USAGE = UsageMaterializer(MeterMap.from_catalog(CATALOG))


def _usage(conn: sa.Connection, subs: list[tuple[str, str]], at: datetime, micros: int, tag: str) -> None:
    USAGE.apply(conn, [USAGE.decode(new_envelope("usage.recorded", {
        "transaction_id": f"tx-{tag}-{s}", "customer_id": c, "subscription_id": s, "event_type": "inference",
        "timestamp": at.isoformat(), "properties": {"cost_usd_micros": micros * (i + 1)},
        "received_at": at.isoformat()}, producer="test", occurred_at=at).to_bytes())
        for i, (s, c) in enumerate(subs)])


def _history(conn: sa.Connection, group: str) -> list[tuple[str, str]]:
    """Four months of a group's closes: usage each month, late usage of January after its close."""
    subs = [(f"sub_{group}_{i}", f"cus_{group}_{i}") for i in range(4)]
    creates = [CreateSubscription(subscription_id=s, customer_id=c, plan_id=plan, currency="USD",
                                  payment_method_id="pm_card_visa", tax_rate_bps=800)
               for (s, c), plan in zip(subs, ["pro", "pro", "team", "pro"], strict=True)]
    BUS.handle(UOW(conn), [(new_envelope("subscription.create", p.model_dump(mode="json"), producer="test",
                                         occurred_at=JAN_1), p) for p in creates], JAN_1)
    start = JAN_1
    for n, end in enumerate(MONTHS):
        _usage(conn, subs, start + timedelta(days=3), 900_000 + 700_000 * n, f"m{n}")
        if n == 1:  # January's usage arriving after January's close: late usage of a closed period
            _usage(conn, subs, JAN_1 + timedelta(days=20), 1_300_000, "late")
        closes = [ClosePeriod(subscription_id=s, customer_id=c, period_end=end) for s, c in subs]
        BUS.handle(UOW(conn), [(new_envelope("period.close", p.model_dump(mode="json"), producer="test",
                                             occurred_at=end), p) for p in closes], end)
        start = end
    return subs


def _books(conn: sa.Connection, group: str) -> dict[str, Any]:
    """What the group's closes billed and left in the ledgers, with the group's tag taken out of the ids."""
    def rows(sql: str) -> list[tuple[Any, ...]]:
        return [tuple(str(v).replace(group, "G") for v in r)
                for r in conn.execute(sa.text(sql), {"p": f"sub_{group}_%"})]

    return {
        "invoices": rows("SELECT subscription_id, kind, period_start, period_end, status, subtotal_minor, "
                         "total_minor, amount_due_minor FROM invoices WHERE subscription_id LIKE :p "
                         "ORDER BY subscription_id, period_end, kind"),
        "lines": rows("SELECT i.subscription_id, i.period_end, l.line_no, l.kind, l.amount_minor, l.quantity "
                      "FROM invoice_lines l JOIN invoices i USING (invoice_id) WHERE i.subscription_id LIKE :p "
                      "ORDER BY 1, 2, 3"),
        "entries": rows("SELECT subscription_id, grant_id, kind, amount_minor, units, occurred_at "
                        "FROM credit_entries WHERE subscription_id LIKE :p ORDER BY subscription_id, entry_id"),
        "grants": rows("SELECT subscription_id, grant_id, amount_minor, units, expires_at, settled_at "
                       "FROM credit_grants WHERE subscription_id LIKE :p ORDER BY grant_id"),
    }


def test_a_close_replays_only_unsettled_grants_and_bills_what_the_whole_ledger_bills(
        engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    tag = uuid.uuid4().hex[:8]
    narrowed, whole = f"n{tag}", f"w{tag}"
    loaded: list[tuple[bool, int]] = []  # (unsettled_only, grant rows read) per ledger read of a close
    real_rows = billing_snapshots.ledger_rows

    def counted(conn: sa.Connection, ids: Any, *, unsettled_only: bool = False) -> Any:
        grants, entries = real_rows(conn, ids, unsettled_only=unsettled_only)
        loaded.append((unsettled_only, sum(len(g) for g in grants.values())))
        return grants, entries

    with engine.connect() as conn, conn.begin():
        monkeypatch.setattr(billing_snapshots, "ledger_rows", counted)
        _history(conn, narrowed)
        narrowed_reads = list(loaded)
        real_load = repo.load_ledgers  # the control: every close replays the whole ledger, as before
        monkeypatch.setattr(repo, "load_ledgers", lambda c, states, kinds, *, unsettled_only=False:
                            real_load(c, states, kinds, unsettled_only=False))
        _history(conn, whole)
        got, expected = _books(conn, narrowed), _books(conn, whole)
        conn.rollback()
    assert got["invoices"] and got["entries"]
    assert len(got["invoices"]) == 4 * 5  # the first invoice and four closes each
    assert got == expected
    closes = [(only, n) for only, n in narrowed_reads if only]
    assert len(closes) == len(MONTHS)
    whole_reads = [n for only, n in loaded[len(narrowed_reads):] if not only]
    # the narrowed replay reads as many grants at the fourth close as at the first; the whole one grows
    assert len({n for _, n in closes}) == 1 and whole_reads == sorted(whole_reads), (closes, whole_reads)
    assert closes[-1][1] * len(MONTHS) == whole_reads[-1], (closes, whole_reads)

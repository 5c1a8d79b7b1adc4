"""What the fault suite reads back from PostgreSQL once the pipeline is quiet.

The invariants of services/demo/audit.py (duplicate invoices, totals, gapless numbers, ledger, charges,
aggregates against events, quota counters) run unchanged; on top of them this compares the stored state
with what the load generators were told was acknowledged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from chaos.corpus import POISON_TX_PREFIX
from chaos.load import Acknowledged
from services.demo.audit import run_invariants

_CHUNK = 5000


@dataclass
class AuditFigures:
    acknowledged_usage: int
    stored_usage: int
    lost_usage: list[str]
    double_counted: int
    duplicate_invoices: int
    invoices_per_period: dict[str, int]
    max_successful_charges_per_invoice: int
    lost_commands: dict[str, int]
    failed_invariants: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"acknowledged_usage": self.acknowledged_usage, "stored_usage": self.stored_usage,
                "lost_usage": len(self.lost_usage), "lost_usage_sample": self.lost_usage[:5],
                "double_counted": self.double_counted, "duplicate_invoices": self.duplicate_invoices,
                "invoices_per_period": self.invoices_per_period,
                "max_successful_charges_per_invoice": self.max_successful_charges_per_invoice,
                "lost_commands": self.lost_commands, "failed_invariants": self.failed_invariants}


def stored_transactions(conn: sa.Connection, transaction_ids: list[str]) -> set[str]:
    """Which of these transaction ids have a usage row (an id PostgreSQL cannot hold has none)."""
    transaction_ids = [t for t in transaction_ids if "\x00" not in t]
    found: set[str] = set()
    for i in range(0, len(transaction_ids), _CHUNK):
        found |= set(conn.execute(sa.text(
            "SELECT transaction_id FROM usage_events WHERE transaction_id = ANY(:ids)"),
            {"ids": transaction_ids[i:i + _CHUNK]}).scalars())
    return found


def _count(conn: sa.Connection, sql: str, **params: Any) -> int:
    return int(conn.execute(sa.text(sql), params).scalar_one() or 0)


# A subscription whose hourly aggregates do not add up to its stored events counted something twice (or
# lost it between the two); the quantity is compared, the event count is the demo audit's invariant.
AGGREGATES_DIFFER_FROM_EVENTS = """
    SELECT count(*) FROM (
      SELECT coalesce(a.subscription_id, e.subscription_id) AS s
      FROM (SELECT subscription_id, sum(quantity) AS q FROM usage_aggregates GROUP BY 1) a
      FULL JOIN (SELECT subscription_id, sum(quantity) AS q FROM usage_events WHERE meter_id IS NOT NULL
                 GROUP BY 1) e ON e.subscription_id = a.subscription_id
      WHERE coalesce(a.q, 0) <> coalesce(e.q, 0)) d"""
# An acknowledged event stored with another quantity than the producer sent is counted wrongly.
ACKNOWLEDGED_STORED_WITH_OTHER_QUANTITY = """
    SELECT count(*) FROM usage_events e JOIN unnest(CAST(:ids AS text[]), CAST(:micros AS numeric[])) AS a(id, q)
      ON a.id = e.transaction_id WHERE e.quantity <> a.q"""


def audit(engine: sa.Engine, ledger: Acknowledged) -> AuditFigures:
    with ledger.lock:
        usage = dict(ledger.usage)
        subscriptions, cancels, enquiries = set(ledger.subscriptions), set(ledger.cancels), set(ledger.enquiries)
    invariants = run_invariants(engine)
    with engine.connect() as conn:
        found = stored_transactions(conn, list(usage))
        lost = sorted(set(usage) - found)
        wrong_quantity = _count(conn, ACKNOWLEDGED_STORED_WITH_OTHER_QUANTITY, ids=list(usage),
                                micros=[q for _, _, q in usage.values()])
        double = (_count(conn, AGGREGATES_DIFFER_FROM_EVENTS) + wrong_quantity
                  + _violations(invariants, "no_usage_event_counted_twice"))
        per_period = {f"{period} {kind}": int(n) for period, kind, n in conn.execute(sa.text(
            "SELECT to_char(period_start AT TIME ZONE 'UTC', 'YYYY-MM'), kind, count(*) FROM invoices "
            "WHERE subscription_id NOT LIKE 'sub_poison%' GROUP BY 1, 2 ORDER BY 1, 2"))}
        max_charges = _count(conn, "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM "
                                   "simulated_gateway_charges WHERE succeeded GROUP BY invoice_id) c")
        lost_commands = {
            "subscriptions": len(subscriptions) - _count(
                conn, "SELECT count(*) FROM subscriptions WHERE subscription_id = ANY(:ids)", ids=list(subscriptions)),
            "cancels": len(cancels) - _count(
                conn, "SELECT count(*) FROM subscriptions WHERE subscription_id = ANY(:ids) "
                      "AND (cancel_at_period_end OR status = 'cancelled')", ids=list(cancels)),
            "report_credits": len(enquiries) - _count(
                conn, "SELECT count(*) FROM quota_consumptions WHERE (org_id || '/' || enquiry_id) = ANY(:ids)",
                ids=[f"{org}/{enquiry}" for org, enquiry in enquiries]),
        }
    return AuditFigures(
        acknowledged_usage=len(usage), stored_usage=len(found), lost_usage=lost, double_counted=double,
        duplicate_invoices=_violations(invariants, "no_duplicate_invoice_per_subscription_and_period"),
        invoices_per_period=per_period, max_successful_charges_per_invoice=max_charges,
        lost_commands=lost_commands,
        failed_invariants={k: int(v) for k, v in invariants.items() if v is not True})


def _violations(invariants: dict[str, bool | int], name: str) -> int:
    value = invariants.get(name, True)
    return 0 if value is True else int(value)


def poison_rows_stored(engine: sa.Engine) -> int:
    """Usage rows that came from the poison corpus (every corpus transaction id has the poison prefix)."""
    with engine.connect() as conn:
        return _count(conn, "SELECT count(*) FROM usage_events WHERE transaction_id LIKE :p "
                            "OR subscription_id LIKE 'sub_poison%'", p=f"{POISON_TX_PREFIX}%")

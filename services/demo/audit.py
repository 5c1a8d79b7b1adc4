"""The invariant audit and the summary figures, computed with SQL against PostgreSQL.

Each invariant query counts violations; 0 means the invariant holds. They read the tables the services
wrote, never the demo's own bookkeeping, so a bug anywhere in the pipeline shows up here.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

INVARIANTS: dict[str, str] = {
    # Identity of an invoice is (subscription, period, kind); the unique constraint should make this 0.
    "no_duplicate_invoice_per_subscription_and_period": """
        SELECT count(*) FROM (
          SELECT 1 FROM invoices WHERE kind <> 'manual'  -- a one-off's identity is its command
          GROUP BY subscription_id, period_start, period_end, kind HAVING count(*) > 1
        ) d""",
    "every_invoice_total_equals_sum_of_lines": """
        SELECT count(*) FROM invoices i
        LEFT JOIN (SELECT invoice_id, sum(amount_minor) AS s FROM invoice_lines GROUP BY invoice_id) l
          ON l.invoice_id = i.invoice_id
        WHERE i.status <> 'draft' AND i.total_minor <> coalesce(l.s, 0)""",
    "every_invoice_line_in_invoice_currency": """
        SELECT count(*) FROM invoice_lines l JOIN invoices i USING (invoice_id) WHERE l.currency <> i.currency""",
    "finalised_invoice_numbers_are_gapless_per_issuer": """
        SELECT count(*) FROM (
          SELECT issuer, max(number_seq) - count(*) AS gap FROM invoices
          WHERE number_seq IS NOT NULL GROUP BY issuer
        ) g WHERE gap <> 0""",
    # The ledger's balance is never stored: it is the sum of entries. Each grant's opening entry must equal
    # the grant, and no grant may be overdrawn.
    "every_ledger_balance_equals_sum_of_entries": """
        SELECT count(*) FROM credit_grants g
        LEFT JOIN credit_entries e ON e.grant_id = g.grant_id AND e.kind = 'grant'
        WHERE coalesce(e.amount_minor, 0) <> coalesce(g.amount_minor, 0)
           OR coalesce(e.units, 0) <> coalesce(g.units, 0)""",
    "no_ledger_balance_below_zero": """
        SELECT count(*) FROM (
          SELECT grant_id FROM credit_entries GROUP BY grant_id
          HAVING coalesce(sum(amount_minor), 0) < 0 OR coalesce(sum(units), 0) < 0
        ) n""",
    "every_successful_charge_belongs_to_exactly_one_invoice": """
        SELECT
          (SELECT count(*) FROM (SELECT invoice_id FROM payment_attempts WHERE status = 'succeeded'
                                 GROUP BY invoice_id HAVING count(*) > 1) a)
        + (SELECT count(*) FROM (SELECT invoice_id FROM simulated_gateway_charges WHERE succeeded
                                 GROUP BY invoice_id HAVING count(*) > 1) b)
        + (SELECT count(*) FROM simulated_gateway_charges c
           WHERE c.succeeded AND NOT EXISTS (SELECT 1 FROM invoices i WHERE i.invoice_id = c.invoice_id))""",
    # Paid in full, and by a payment we can name: exactly one succeeded attempt (our executor charged it), or,
    # when no attempt succeeded, the provider's payment reference recorded on the invoice (a payment we learned
    # of from the provider, through a webhook or the dunning service's reconciliation, has no attempt). In full:
    # cash paid + what the customer balance covered + what credit notes took off while it was open = what it
    # billed. An invoice with nothing left to pay in cash is paid at finalisation without either.
    "every_paid_invoice_is_paid_in_full_once": """
        SELECT count(*) FROM invoices i
        LEFT JOIN (SELECT invoice_id, count(*) AS n FROM payment_attempts WHERE status = 'succeeded'
                   GROUP BY invoice_id) s ON s.invoice_id = i.invoice_id
        LEFT JOIN (SELECT invoice_id, sum(reduced_minor) AS reduced FROM credit_notes GROUP BY invoice_id) n
          ON n.invoice_id = i.invoice_id
        WHERE i.status = 'paid' AND (
          i.amount_paid_minor + i.balance_applied_minor + coalesce(n.reduced, 0) <> GREATEST(i.total_minor, 0)
          OR (i.amount_paid_minor > 0 AND NOT (
            coalesce(s.n, 0) = 1 OR (coalesce(s.n, 0) = 0 AND i.provider_ref IS NOT NULL))))""",
    # The converse, from the provider's record: every payment the (simulated) provider took is on its
    # invoice, paid, under that PaymentIntent, for that amount and currency. A payment made at the provider
    # whose webhook was lost stays a violation until the reconciliation reports it and the worker applies it.
    "every_payment_taken_at_the_provider_is_on_its_invoice": """
        SELECT count(*) FROM simulated_gateway_charges c
        LEFT JOIN invoices i ON i.invoice_id = c.invoice_id
        WHERE c.succeeded AND (i.invoice_id IS NULL OR i.status <> 'paid'
                               OR i.provider_ref IS DISTINCT FROM c.provider_ref
                               OR i.amount_paid_minor <> c.amount_minor OR upper(i.currency) <> upper(c.currency))""",
    "no_usage_event_counted_twice": """
        SELECT count(*) FROM (
          SELECT a.subscription_id, a.meter_id FROM usage_aggregates a
          GROUP BY a.subscription_id, a.meter_id
          HAVING sum(a.event_count) <> (SELECT count(*) FROM usage_events e
                                         WHERE e.subscription_id = a.subscription_id
                                           AND e.meter_id = a.meter_id)
        ) d""",
}

# Credit notes have their own gapless numbers per issuer, like invoices.
INVARIANTS["credit_note_numbers_are_gapless_per_issuer"] = """
    SELECT count(*) FROM (
      SELECT issuer, max(number_seq) - count(*) AS gap FROM credit_notes GROUP BY issuer
    ) g WHERE gap <> 0"""
# The customer balance is the sum of its append-only entries, and never went below zero at any entry (a
# customer's entries are written under its balance row's lock, so their seq order is their commit order).
INVARIANTS["customer_balance_equals_sum_of_entries_never_negative"] = """
    SELECT
      (SELECT count(*) FROM customer_balances b
       FULL JOIN (SELECT customer_id, currency, sum(amount_minor) AS s FROM customer_balance_entries
                  GROUP BY customer_id, currency) e USING (customer_id, currency)
       WHERE coalesce(b.balance_minor, 0) <> coalesce(e.s, 0))
    + (SELECT count(*) FROM (
         SELECT sum(amount_minor) OVER (PARTITION BY customer_id, currency ORDER BY seq) AS running
         FROM customer_balance_entries) r WHERE r.running < 0)"""
# Every finalised invoice settles: total - credit notes = (paid - refunded - credited to the balance)
# + balance applied + written off + still owed. Each term comes from its own record: cash paid from the
# invoice, refunds and reductions from the credit notes, the balance's part from the balance entries (draws
# less what a void gave back), so a pipeline that moves money in one place and not the other shows up here.
# A negative total is credited to the balance in full; a credit note never exceeds what was billed.
INVARIANTS["every_invoice_settles_total_less_credit_notes"] = """
    WITH notes AS (
      SELECT invoice_id, sum(total_minor) AS total, sum(reduced_minor) AS reduced,
             sum(refunded_minor) AS refunded, sum(credited_minor) AS credited
      FROM credit_notes GROUP BY invoice_id),
    entries AS (
      SELECT invoice_id,
             -sum(amount_minor) FILTER (WHERE kind IN ('invoice_draw', 'void_restore')) AS applied,
             sum(amount_minor) FILTER (WHERE kind = 'credit_note') AS credited,
             sum(amount_minor) FILTER (WHERE kind = 'invoice_credit') AS negative_total_credited
      FROM customer_balance_entries WHERE invoice_id IS NOT NULL GROUP BY invoice_id),
    settled AS (
      SELECT i.invoice_id, i.status, i.total_minor, i.amount_paid_minor AS paid,
             GREATEST(i.total_minor, 0) AS billed,
             coalesce(n.total, 0) AS noted, coalesce(n.reduced, 0) AS reduced,
             coalesce(n.refunded, 0) AS refunded, coalesce(e.credited, 0) AS credited,
             coalesce(e.applied, 0) AS applied, coalesce(e.negative_total_credited, 0) AS negative_total_credited,
             CASE i.status WHEN 'void' THEN GREATEST(i.total_minor, 0) - coalesce(n.reduced, 0) - i.amount_paid_minor
                           WHEN 'uncollectible' THEN i.amount_due_minor - coalesce(n.reduced, 0) - i.amount_paid_minor
                           ELSE 0 END AS written_off,
             CASE WHEN i.status = 'open' THEN i.amount_due_minor - coalesce(n.reduced, 0) - i.amount_paid_minor
                  ELSE 0 END AS owed
      FROM invoices i
      LEFT JOIN notes n ON n.invoice_id = i.invoice_id
      LEFT JOIN entries e ON e.invoice_id = i.invoice_id
      WHERE i.number IS NOT NULL)
    SELECT count(*) FROM settled
    WHERE billed - noted <> (paid - refunded - credited) + applied + written_off + owed
       OR noted > billed OR refunded > paid
       OR (total_minor < 0 AND negative_total_credited <> -total_minor)"""


# Hard quotas: no org month, trial or user went past what it was allowed, and the counters agree with the
# admitted reports (one row per enquiry), so nothing was admitted off the books. Each part names the table
# it needs; a part whose table this deployment does not have is skipped.
QUOTA_OVERSPEND_PARTS: dict[str, str] = {
    "quota_org_months": """SELECT count(*) FROM quota_org_months m WHERE m.plan_monthly_reports IS NOT NULL
                            AND m.used > GREATEST(m.plan_monthly_reports + m.top_ups, m.carried_over)""",
    "quota_orgs": "SELECT count(*) FROM quota_orgs o WHERE o.trial_used > o.trial_reports",
    "quota_user_months": """SELECT count(*) FROM quota_user_months u
                             WHERE u.limit_at_last_use IS NOT NULL AND u.used > u.limit_at_last_use""",
    # Synchronously authorised spend never passed the limit it was checked against.
    "spend_periods": """SELECT count(*) FROM spend_periods p WHERE p.limit_quantity IS NOT NULL
                         AND p.reserved_quantity + p.observed_quantity > p.limit_quantity""",
}
INVARIANTS["quota_counters_equal_admitted_reports"] = """
    SELECT count(*) FROM quota_org_months m
    WHERE m.used <> (SELECT count(*) FROM quota_consumptions c
                     WHERE c.org_id = m.org_id AND c.month_start = m.month_start)"""


def _table_exists(conn: sa.Connection, name: str) -> bool:
    return bool(conn.execute(sa.text("SELECT to_regclass(:n) IS NOT NULL"), {"n": name}).scalar())


def count_violations(conn: sa.Connection, name: str) -> int:
    """How many rows break the invariant `name` of ``INVARIANTS`` (0: it holds)."""
    return int(conn.execute(sa.text(INVARIANTS[name])).scalar_one())


def run_invariants(engine: sa.Engine) -> dict[str, bool | int]:
    """Invariant name -> True when it holds, else the number of violations."""
    results: dict[str, bool | int] = {}
    with engine.connect() as conn:
        for name in INVARIANTS:
            violations = count_violations(conn, name)
            results[name] = True if violations == 0 else violations
        overspend = sum(int(conn.execute(sa.text(sql)).scalar_one())
                        for table, sql in QUOTA_OVERSPEND_PARTS.items() if _table_exists(conn, table))
        results["no_quota_overspend"] = True if overspend == 0 else overspend
    return results


# Paid invoices we learned were paid only from the dunning service's reconciliation: no attempt of ours
# succeeded, and the payment report the worker applied came from the open-invoice pass (a payment made at
# the provider whose webhook was lost).
RECOVERED_BY_RECONCILIATION = """
    SELECT count(*) FROM invoices i
    WHERE i.status = 'paid'
      AND NOT EXISTS (SELECT 1 FROM payment_attempts p WHERE p.invoice_id = i.invoice_id AND p.status = 'succeeded')
      AND EXISTS (SELECT 1 FROM outbox o WHERE o.event_type = 'payment.succeeded'
                  AND o.envelope -> 'payload' ->> 'source' = 'reconciliation'
                  AND o.envelope -> 'payload' ->> 'invoice_id' = i.invoice_id
                  AND o.envelope -> 'payload' ->> 'provider_ref' = i.provider_ref)"""


def invoices_recovered_by_reconciliation(conn: sa.Connection) -> int:
    return int(conn.execute(sa.text(RECOVERED_BY_RECONCILIATION)).scalar_one())


def _pairs(conn: sa.Connection, sql: str) -> dict[Any, Any]:
    return {row[0]: row[1] for row in conn.execute(sa.text(sql))}


def _scalar(conn: sa.Connection, sql: str, **params: Any) -> Any:
    return conn.execute(sa.text(sql), params).scalar()


def summarise(engine: sa.Engine) -> dict[str, Any]:
    """Business figures for the summary (all from PostgreSQL)."""
    with engine.connect() as conn:
        customers = _pairs(conn, "SELECT kind, count(*) FROM customers GROUP BY kind")
        subs = _pairs(conn, "SELECT status, count(*) FROM subscriptions GROUP BY status")
        plans = _pairs(conn, "SELECT plan_id, count(*) FROM subscriptions GROUP BY plan_id ORDER BY 2 DESC")
        by_status = _pairs(conn, "SELECT status, count(*) FROM invoices GROUP BY status")
        by_kind = _pairs(conn, "SELECT kind, count(*) FROM invoices GROUP BY kind")
        revenue_rows = conn.execute(sa.text("""
            SELECT currency,
                   sum(total_minor) FILTER (WHERE status IN ('open', 'paid', 'uncollectible')) AS invoiced,
                   sum(amount_paid_minor) FILTER (WHERE status = 'paid') AS collected,
                   sum(total_minor) FILTER (WHERE status = 'open') AS outstanding,
                   sum(total_minor) FILTER (WHERE status = 'uncollectible') AS written_off,
                   sum(discount_minor) AS discounts, sum(tax_minor) AS tax,
                   sum(credits_applied_minor) AS credits_applied
            FROM invoices GROUP BY currency""")).mappings().all()
        credits = conn.execute(sa.text("""
            SELECT g.meter_id, g.currency,
                   sum(e.amount_minor) FILTER (WHERE e.kind = 'grant') AS granted_minor,
                   -sum(e.amount_minor) FILTER (WHERE e.kind = 'consume') AS consumed_minor,
                   -sum(e.amount_minor) FILTER (WHERE e.kind = 'expire') AS expired_minor,
                   sum(e.units) FILTER (WHERE e.kind = 'grant') AS granted_units,
                   -sum(e.units) FILTER (WHERE e.kind = 'consume') AS consumed_units
            FROM credit_entries e JOIN credit_grants g USING (grant_id)
            GROUP BY g.meter_id, g.currency ORDER BY 1""")).mappings().all()
        usage_stored = _scalar(conn, "SELECT count(*) FROM usage_events")
        usage_by_meter = _pairs(conn, "SELECT coalesce(meter_id, '(no meter)'), count(*) FROM usage_events GROUP BY 1")
        attempts = _pairs(conn, "SELECT status, count(*) FROM payment_attempts GROUP BY status")
        dunning: dict[str, Any] = {}
        if _table_exists(conn, "dunning_cases"):
            dunning["cases_by_status"] = _pairs(conn, "SELECT status, count(*) FROM dunning_cases GROUP BY status")
        if _table_exists(conn, "dunning_notifications"):
            dunning["notifications_by_kind"] = _pairs(
                conn, "SELECT kind, count(*) FROM dunning_notifications GROUP BY kind")
        dunning["retries_requested"] = _scalar(
            conn, "SELECT count(*) FROM payment_attempts WHERE reason <> 'initial'")
        dunning["invoices_recovered_by_reconciliation"] = invoices_recovered_by_reconciliation(conn)
        dlq_like = _scalar(conn, "SELECT count(*) FROM command_outcomes WHERE status = 'rejected'")
        catalog_and_credits = {
            "plan_versions": _pairs(conn, "SELECT plan_id, count(*) FROM catalog_plan_versions GROUP BY 1 ORDER BY 1"),
            "subscriptions_on_a_new_version": _pairs(
                conn, "SELECT coalesce(pending_plan_id, plan_id), count(*) FROM subscriptions "
                      "WHERE plan_id LIKE '%@v%' OR pending_plan_id LIKE '%@v%' GROUP BY 1"),
            "credit_purchases_by_status": _pairs(conn, "SELECT status, count(*) FROM credit_purchases GROUP BY 1"),
            "launch_coupon_redemptions": _scalar(
                conn, "SELECT count(*) FROM coupon_attachments WHERE coupon_id = 'LAUNCH15'"),
        }
        webhooks = {
            "by_status": _pairs(conn, "SELECT status, count(*) FROM webhook_deliveries GROUP BY status"),
            "attempts": _scalar(conn, "SELECT count(*) FROM webhook_delivery_attempts"),
            "by_event": _pairs(conn, "SELECT event_type, count(*) FROM webhook_deliveries GROUP BY 1 ORDER BY 1"),
        }
        corrections = conn.execute(sa.text("""
            SELECT (SELECT count(*) FROM credit_notes) AS credit_notes,
                   (SELECT coalesce(sum(refunded_minor), 0) FROM credit_notes) AS refunded_minor,
                   (SELECT coalesce(sum(credited_minor), 0) FROM credit_notes) AS credited_to_balance_minor,
                   (SELECT coalesce(sum(reduced_minor), 0) FROM credit_notes) AS reduced_minor,
                   (SELECT count(*) FROM refunds WHERE status = 'succeeded') AS refunds_succeeded,
                   (SELECT count(*) FROM invoices WHERE status = 'void') AS invoices_voided,
                   (SELECT count(*) FROM invoices WHERE kind = 'manual') AS one_off_invoices,
                   (SELECT coalesce(sum(balance_applied_minor), 0) FROM invoices) AS balance_applied_minor,
                   (SELECT coalesce(sum(balance_minor), 0) FROM customer_balances) AS balances_held_minor,
                   (SELECT count(*) FROM invoices i JOIN subscriptions s USING (subscription_id)
                    WHERE i.kind = 'period_close' AND i.period_end = s.cancelled_at
                      AND NOT s.cancel_at_period_end) AS final_invoices_on_cancel_now,
                   (SELECT count(*) FROM invoice_lines WHERE kind = 'adjustment' AND meter_id IS NOT NULL)
                     AS late_usage_adjustment_lines""")).mappings().one()
    return {
        "customers": {"total": sum(customers.values()), "by_kind": customers},
        "subscriptions": {"by_status": subs, "by_plan": plans},
        "invoices_total": sum(by_status.values()),
        "invoices_by_status": by_status,
        "invoices_by_kind": by_kind,
        "revenue": {r["currency"]: {k: int(v or 0) for k, v in r.items() if k != "currency"}
                    for r in revenue_rows},
        "credits": [{k: (str(v) if v is not None and k.endswith("units") else v) for k, v in r.items()}
                    for r in credits],
        "usage_stored": {"events": usage_stored, "by_meter": usage_by_meter},
        "payments": {"attempts_by_status": attempts},
        "dunning": dunning,
        "commands_rejected": dlq_like,
        "corrections_stored": {k: int(v) for k, v in corrections.items()},
        "webhook_deliveries": webhooks,
        "catalog_and_credits_stored": catalog_and_credits,
    }

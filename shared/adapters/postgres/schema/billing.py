"""Tables of the billing area: subscriptions, invoices, the credit ledger, coupons, payment attempts, audit.

Identity is held by constraints, never by check-then-insert (DESIGN.md rule 3):
- an invoice is UNIQUE (subscription_id, period_start, period_end, kind), and its id is derived from that
  key, so rebuilding it after a crash hits the same row;
- invoice numbers are gapless per issuer: a counter row in `invoice_number_sequences` is advanced in the
  transaction that finalises the invoices (UNIQUE (issuer, number) as backstop);
- a payment attempt is written *before* the provider is called, UNIQUE (invoice_id, attempt_no), and the
  provider idempotency key derives from the attempt id; at most one attempt per invoice can be `succeeded`;
- a coupon discounts an invoice once: the redemption key (coupon, invoice) is the primary key;
- ledger entries and the audit log are append-only: a trigger refuses UPDATE and DELETE (rule 8).

Money is BIGINT minor units plus an ISO 4217 currency on every row (rule 5). The subscription and invoice
columns are also the edge's read model, so their names are plain (`subscriptions.status`, `invoices.number`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from .base import created_at, metadata


def _updated_at() -> sa.Column[Any]:
    return sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())


def _ts(name: str, *, nullable: bool = True, comment: str | None = None) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable, comment=comment)


def _currency(nullable: bool = False) -> sa.Column[Any]:
    return sa.Column("currency", sa.String(3), nullable=nullable)


SUBSCRIPTION_STATUSES = ("trialing", "active", "past_due", "paused", "cancelled")
INVOICE_STATUSES = ("draft", "open", "paid", "void", "uncollectible")
# The reason an invoice exists (shared.domain.invoice.InvoiceReason); part of its identity.
INVOICE_KINDS = ("subscription_start", "period_close", "subscription_change", "manual")
ATTEMPT_STATUSES = ("pending", "in_flight", "succeeded", "declined", "unknown", "cancelled")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


# ----------------------------------------------------------------------------------------- subscriptions

# The subscription aggregate, written only by the billing-worker instance that owns its partition.
# Currency, timezone and tax rate are the snapshot the subscribe command carried (replays stay exact).
subscriptions = sa.Table(
    "subscriptions", metadata,
    sa.Column("subscription_id", sa.Text, primary_key=True),
    sa.Column("customer_id", sa.Text, nullable=False, index=True),
    sa.Column("plan_id", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("seats", sa.Integer, nullable=False, server_default="1"),
    sa.Column("interval", sa.Text, nullable=False, server_default="month"),
    sa.Column("pending_plan_id", sa.Text, comment="a downgrade waiting for the period end"),
    sa.Column("pending_seats", sa.Integer, comment="a seat decrease waiting for the period end"),
    _currency(),
    sa.Column("timezone", sa.Text, nullable=False, server_default="UTC"),
    sa.Column("tax_rate_bps", sa.Integer, nullable=False, server_default="0"),
    sa.Column("anchor_day", sa.SmallInteger, nullable=False),
    sa.Column("anchor_month", sa.SmallInteger, nullable=False, server_default="1"),
    sa.Column("anchor_time", sa.Time, nullable=False, server_default="00:00:00"),
    _ts("current_period_start", nullable=False),
    _ts("current_period_end", nullable=False),
    _ts("started_at", nullable=False),
    _ts("trial_end"),
    sa.Column("cancel_at_period_end", sa.Boolean, nullable=False, server_default=sa.false()),
    _ts("cancelled_at"),
    sa.Column("cancel_reason", sa.Text),
    _ts("paused_at"),
    sa.Column("payment_method_id", sa.Text),
    sa.Column("coupon_id", sa.Text),
    _ts("coupon_redeemed_at"),
    sa.Column("coupon_invoice_keys", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb"),
              comment="the invoices the coupon already discounted (its duration counts them)"),
    sa.Column("carried_credit_minor", sa.BigInteger, nullable=False, server_default="0",
              comment="credit of a negative invoice (e.g. an immediate downgrade), deducted on the next one"),
    sa.Column("version", sa.BigInteger, nullable=False, server_default="1"),
    created_at(),
    _updated_at(),
    sa.CheckConstraint(_in("status", SUBSCRIPTION_STATUSES), name="status"),
    sa.CheckConstraint("seats >= 1", name="seats"),
    sa.CheckConstraint("pending_seats IS NULL OR pending_seats >= 1", name="pending_seats"),
    sa.CheckConstraint("current_period_start < current_period_end", name="period"),
    sa.CheckConstraint("anchor_day BETWEEN 1 AND 31", name="anchor_day"),
    sa.CheckConstraint("interval IN ('month', 'year')", name="interval"),
    sa.CheckConstraint("anchor_month BETWEEN 1 AND 12", name="anchor_month"),
    sa.CheckConstraint("tax_rate_bps BETWEEN 0 AND 10000", name="tax_rate_bps"),
    sa.CheckConstraint("carried_credit_minor >= 0", name="carried_credit"),
)
# The scheduler's scans: due period ends and due trial ends among live subscriptions.
sa.Index("ix_subscriptions_due_period_end", subscriptions.c.current_period_end,
         postgresql_where=subscriptions.c.status.in_(("active", "past_due", "paused")))
sa.Index("ix_subscriptions_due_trial_end", subscriptions.c.trial_end,
         postgresql_where=subscriptions.c.status == "trialing")

# One row per billing period a subscription has lived through: what was billed for it and when it closed.
subscription_periods = sa.Table(
    "subscription_periods", metadata,
    sa.Column("subscription_id", sa.Text, sa.ForeignKey("subscriptions.subscription_id"), nullable=False),
    _ts("period_start", nullable=False),
    _ts("period_end", nullable=False),
    sa.Column("plan_id", sa.Text, nullable=False),
    sa.Column("seats", sa.Integer, nullable=False),
    sa.Column("invoice_id", sa.Text),
    _ts("closed_at"),
    created_at(),
    sa.PrimaryKeyConstraint("subscription_id", "period_start"),
    sa.CheckConstraint("period_start < period_end", name="period"),
)

# Append-only history of every change (status, plan, seats, cancellation flags), for billing history.
subscription_history = sa.Table(
    "subscription_history", metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("subscription_id", sa.Text, nullable=False),
    sa.Column("event_id", sa.Text, nullable=False, unique=True, comment="the domain event's id"),
    sa.Column("event_type", sa.Text, nullable=False),
    _ts("occurred_at", nullable=False),
    sa.Column("old_status", sa.Text),
    sa.Column("new_status", sa.Text),
    sa.Column("plan_id", sa.Text),
    sa.Column("seats", sa.Integer),
    sa.Column("detail", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("command_id", sa.Text),
    created_at(),
)
sa.Index("ix_subscription_history_subscription", subscription_history.c.subscription_id,
         subscription_history.c.occurred_at)

# ---------------------------------------------------------------------------------------------- invoices

invoices = sa.Table(
    "invoices", metadata,
    sa.Column("invoice_id", sa.Text, primary_key=True, comment="derived from the identity key"),
    sa.Column("subscription_id", sa.Text, nullable=False),
    sa.Column("customer_id", sa.Text, nullable=False, index=True),
    sa.Column("kind", sa.Text, nullable=False),
    _ts("period_start", nullable=False),
    _ts("period_end", nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("issuer", sa.Text, nullable=False, server_default="default"),
    sa.Column("number", sa.Text, comment="assigned at finalisation, gapless per issuer"),
    sa.Column("number_seq", sa.BigInteger),
    _currency(),
    sa.Column("subtotal_minor", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("discount_minor", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("credits_applied_minor", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("tax_minor", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("total_minor", sa.BigInteger, nullable=False,
              comment="sum of the lines; negative when credits exceed charges (carried to the next invoice)"),
    sa.Column("amount_due_minor", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("amount_paid_minor", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("pre_payment_credit_minor", sa.BigInteger, nullable=False, server_default="0",
              comment="what credit notes took off while it was owed (lowers amount_remaining)"),
    sa.Column("balance_applied_minor", sa.BigInteger, nullable=False, server_default="0",
              comment="drawn from the customer's credit balance at finalisation (customer_balance_entries)"),
    sa.Column("tax_rate_bps", sa.Integer, nullable=False, server_default="0"),
    sa.Column("plan_id", sa.Text),
    sa.Column("payment_method_id", sa.Text),
    sa.Column("provider_ref", sa.Text, comment="e.g. the Stripe PaymentIntent id of the paying attempt"),
    _ts("issued_at", comment="the billing instant at finalisation"),
    _ts("due_at"),
    _ts("paid_at"),
    _ts("voided_at"),
    _ts("marked_uncollectible_at"),
    _ts("finalizes_at", comment="a draft: when its grace ends and the scheduler has it finalised"),
    sa.Column("attempt_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_decline_code", sa.Text),
    created_at(),
    _updated_at(),
    sa.UniqueConstraint("issuer", "number", name="uq_invoices_issuer_number"),
    sa.CheckConstraint(_in("status", INVOICE_STATUSES), name="status"),
    sa.CheckConstraint(_in("kind", INVOICE_KINDS), name="kind"),
    # a voided draft never got a number; every other status but draft has one
    sa.CheckConstraint("status = 'void' OR (status = 'draft') = (number IS NULL)", name="numbered_when_final"),
    sa.CheckConstraint("amount_due_minor = GREATEST(total_minor, 0) - balance_applied_minor", name="amount_due"),
    sa.CheckConstraint("balance_applied_minor BETWEEN 0 AND GREATEST(total_minor, 0)", name="balance_applied"),
    sa.CheckConstraint("amount_paid_minor BETWEEN 0 AND amount_due_minor", name="amount_paid"),
    sa.CheckConstraint("period_start < period_end", name="period"),
    sa.CheckConstraint("status <> 'paid' OR paid_at IS NOT NULL", name="paid_at"),
)
# The business identity of an invoice, except manual ones (one-off charges: several may share a billing instant;
# their id derives from the command's event id, so the primary key makes a replay a no-op).
sa.Index("uq_invoices_identity", invoices.c.subscription_id, invoices.c.period_start, invoices.c.period_end,
         invoices.c.kind, unique=True, postgresql_where=invoices.c.kind != "manual")
sa.Index("ix_invoices_subscription", invoices.c.subscription_id, invoices.c.period_start)
# The scheduler's scan of drafts whose grace has ended (few rows: only invoices still in their grace).
sa.Index("ix_invoices_drafts_due", invoices.c.finalizes_at, postgresql_where=sa.text("status = 'draft'"))
sa.Index("ix_invoices_open", invoices.c.subscription_id, postgresql_where=invoices.c.status == "open")

LINE_KINDS = ("fee", "usage", "proration", "discount", "credit", "tax", "adjustment")

# The lines an invoice is made of. The invoice total equals the sum of its lines; the audit
# (billing_repository.audit_invoice_totals) checks it, because a CHECK cannot span rows.
invoice_lines = sa.Table(
    "invoice_lines", metadata,
    sa.Column("invoice_id", sa.Text, sa.ForeignKey("invoices.invoice_id"), nullable=False),
    sa.Column("line_no", sa.SmallInteger, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("amount_minor", sa.BigInteger, nullable=False),
    _currency(),
    sa.Column("quantity", sa.Numeric),
    sa.Column("unit_price", sa.Numeric, comment="major units, may be finer than the minor unit"),
    sa.Column("meter_id", sa.Text),
    sa.Column("plan_id", sa.Text),
    _ts("period_start"),
    _ts("period_end"),
    sa.Column("proration", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("taxable", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("source", JSONB, comment="trace to what produced the line (usage aggregates, grants, coupon)"),
    sa.PrimaryKeyConstraint("invoice_id", "line_no"),
    sa.CheckConstraint(_in("kind", LINE_KINDS), name="kind"),
)

# Gapless invoice numbering: one counter row per issuer, advanced in the finalising transaction
# (UPDATE ... SET next_number = next_number + n RETURNING), so a rolled-back finalisation frees its numbers.
invoice_number_sequences = sa.Table(
    "invoice_number_sequences", metadata,
    sa.Column("issuer", sa.Text, primary_key=True),
    sa.Column("prefix", sa.Text, nullable=False),
    sa.Column("next_number", sa.BigInteger, nullable=False, server_default="1"),
    _updated_at(),
    sa.CheckConstraint("next_number >= 1", name="next_number"),
)

# ----------------------------------------------------------------------------------------- credit ledger

GRANT_SOURCES = ("plan_included", "top_up", "promotional", "trial", "refund")

# A grant of credits to a subscription for one meter: money (amount_minor + currency) or units.
credit_grants = sa.Table(
    "credit_grants", metadata,
    sa.Column("grant_id", sa.Text, primary_key=True, comment="deterministic for plan-included grants"),
    sa.Column("subscription_id", sa.Text, nullable=False),
    sa.Column("customer_id", sa.Text, nullable=False),
    sa.Column("meter_id", sa.Text, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("amount_minor", sa.BigInteger),
    _currency(nullable=True),
    sa.Column("units", sa.Numeric),
    sa.Column("priority", sa.Integer, nullable=False, server_default="100"),
    _ts("effective_at", nullable=False),
    _ts("expires_at"),
    _ts("granted_at", nullable=False),
    _ts("settled_at", comment="set once the grant expired and what was left was written off (or nothing was)"),
    created_at(),
    sa.CheckConstraint(_in("source", GRANT_SOURCES), name="source"),
    sa.CheckConstraint("(amount_minor IS NULL) <> (units IS NULL)", name="money_or_units"),
    sa.CheckConstraint("(amount_minor IS NULL) = (currency IS NULL)", name="currency_with_money"),
    sa.CheckConstraint("amount_minor IS NULL OR amount_minor > 0", name="amount_positive"),
    sa.CheckConstraint("units IS NULL OR units > 0", name="units_positive"),
    sa.CheckConstraint("expires_at IS NULL OR effective_at < expires_at", name="window"),
)
sa.Index("ix_credit_grants_subscription", credit_grants.c.subscription_id, credit_grants.c.meter_id)
# The scheduler's scan: grants past their expiry that nothing settled yet. Plan-included grants are left out, as
# the scan leaves them out (their period's close settles them): at a billing run's instant every subscription's
# included grant has expired and is not settled yet, and the scan, every scheduler tick, read them all (~100 ms
# with 10,000 subscriptions), and each close wrote one more index entry per grant.
sa.Index("ix_credit_grants_unsettled_expiry", credit_grants.c.expires_at,
         postgresql_where=sa.text("expires_at IS NOT NULL AND settled_at IS NULL AND source <> 'plan_included'"))

# The API's grant id (`cg_...`, stored as `<subscription>|cg_...`): `POST /v1/credit-grants/{id}/void` finds it.
sa.Index("ix_credit_grants_api_id", sa.func.split_part(credit_grants.c.grant_id, "|", 2))

ENTRY_KINDS = ("grant", "consume", "expire", "reverse", "void")

# Append-only movements of a grant; a grant's balance is the sum of its entries (never stored).
credit_entries = sa.Table(
    "credit_entries", metadata,
    sa.Column("entry_id", sa.Text, primary_key=True, comment="deterministic: replays hit the same key"),
    sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False, unique=True,
              comment="write order: the ledger is replayed in it"),
    sa.Column("grant_id", sa.Text, sa.ForeignKey("credit_grants.grant_id"), nullable=False, index=True),
    sa.Column("subscription_id", sa.Text, nullable=False, index=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("amount_minor", sa.BigInteger),
    sa.Column("units", sa.Numeric),
    sa.Column("invoice_id", sa.Text),
    sa.Column("reference", sa.Text, comment="the consumption's reference (usage line of an invoice, request)"),
    _ts("occurred_at", nullable=False),
    created_at(),
    sa.CheckConstraint(_in("kind", ENTRY_KINDS), name="kind"),
    sa.CheckConstraint("(amount_minor IS NULL) <> (units IS NULL)", name="money_or_units"),
)

# ----------------------------------------------------------------------------- prepaid credit purchases

PURCHASE_STATUSES = ("pending", "granted", "cancelled")
PURCHASE_ORIGINS = ("manual", "auto_recharge")

# A purchase of prepaid credit (shared/domain/credit_purchase.py): a MANUAL invoice for `price_minor`; the credit
# (`amount_minor` on `meter_id`) is granted once that invoice is paid. Written by the subscription's worker.
credit_purchases = sa.Table(
    "credit_purchases", metadata,
    sa.Column("purchase_id", sa.Text, primary_key=True, comment="cp_..., derived from the request"),
    sa.Column("subscription_id", sa.Text, nullable=False, index=True),
    sa.Column("customer_id", sa.Text, nullable=False),
    sa.Column("meter_id", sa.Text, nullable=False),
    sa.Column("amount_minor", sa.BigInteger, nullable=False, comment="credit bought"),
    sa.Column("price_minor", sa.BigInteger, nullable=False, comment="what the invoice charges for it"),
    _currency(),
    sa.Column("invoice_id", sa.Text, nullable=False, unique=True),
    sa.Column("origin", sa.Text, nullable=False, server_default="manual"),
    sa.Column("status", sa.Text, nullable=False, server_default="pending"),
    sa.Column("grant_id", sa.Text, comment="the credit_grants row once granted"),
    _ts("expires_at"),
    _ts("created_at", nullable=False),
    _ts("settled_at", comment="granted or cancelled at"),
    sa.CheckConstraint("amount_minor > 0 AND price_minor > 0", name="positive"),
    sa.CheckConstraint(_in("status", PURCHASE_STATUSES), name="status"),
    sa.CheckConstraint(_in("origin", PURCHASE_ORIGINS), name="origin"),
    sa.CheckConstraint("(status = 'granted') = (grant_id IS NOT NULL)", name="granted_with_grant"),
)
# NOTE: one recharge pending per subscription and meter: concurrent usage batches that all see the balance
# cross the threshold insert one purchase; the others' inserts conflict and are skipped.
sa.Index("uq_credit_purchases_pending_recharge", credit_purchases.c.subscription_id, credit_purchases.c.meter_id,
         unique=True, postgresql_where=sa.and_(credit_purchases.c.status == "pending",
                                               credit_purchases.c.origin == "auto_recharge"))

# Auto-recharge settings per subscription and meter (`PUT /v1/subscriptions/{id}/auto-recharge`).
auto_recharges = sa.Table(
    "auto_recharges", metadata,
    sa.Column("subscription_id", sa.Text, primary_key=True),
    sa.Column("meter_id", sa.Text, primary_key=True),
    sa.Column("threshold_minor", sa.BigInteger, nullable=False),
    sa.Column("target_minor", sa.BigInteger, nullable=False),
    _currency(),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    _updated_at(),
    sa.CheckConstraint("threshold_minor >= 0 AND target_minor > threshold_minor", name="levels"),
)

# ------------------------------------------------------------------------------------- customer balance

BALANCE_ENTRY_KINDS = ("credit_note", "invoice_credit", "adjustment", "invoice_draw", "void_restore")

# Money a customer holds with us per currency (shared/domain/customer_balance.py): the sum of its entries,
# never negative. Written with `SET balance_minor = balance_minor + :delta` in the writer's transaction, so
# the row lock serialises two writers of one customer (workers of different partitions, the edge).
customer_balances = sa.Table(
    "customer_balances", metadata,
    sa.Column("customer_id", sa.Text, primary_key=True),
    sa.Column("currency", sa.String(3), primary_key=True),
    sa.Column("balance_minor", sa.BigInteger, nullable=False, server_default="0"),
    _updated_at(),
    sa.CheckConstraint("balance_minor >= 0", name="balance_not_negative"),
)

# Append-only movements of a balance: + credited to the customer, - drawn or debited. The entry id is
# deterministic (a replay writes nothing twice) and only a newly written entry moves the balance.
customer_balance_entries = sa.Table(
    "customer_balance_entries", metadata,
    sa.Column("entry_id", sa.Text, primary_key=True, comment="deterministic: replays hit the same key"),
    sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False, unique=True, comment="write order"),
    sa.Column("customer_id", sa.Text, nullable=False),
    _currency(),
    sa.Column("amount_minor", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("invoice_id", sa.Text),
    sa.Column("credit_note_id", sa.Text),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    _ts("occurred_at", nullable=False),
    created_at(),
    sa.CheckConstraint(_in("kind", BALANCE_ENTRY_KINDS), name="kind"),
    sa.CheckConstraint("amount_minor <> 0", name="amount_not_zero"),
)
sa.Index("ix_customer_balance_entries_customer", customer_balance_entries.c.customer_id,
         customer_balance_entries.c.currency, customer_balance_entries.c.seq)

# ----------------------------------------------------------------------------------------------- coupons

# Which subscriptions redeemed which coupon (max_redemptions counts these rows).
coupon_attachments = sa.Table(
    "coupon_attachments", metadata,
    sa.Column("coupon_id", sa.Text, primary_key=True),
    sa.Column("subscription_id", sa.Text, primary_key=True),
    _ts("attached_at", nullable=False),
)

# One row per invoice a coupon discounted; the key (coupon, invoice identity) makes it count once even if
# the invoice is built twice.
coupon_redemptions = sa.Table(
    "coupon_redemptions", metadata,
    sa.Column("redemption_key", sa.Text, primary_key=True),
    sa.Column("coupon_id", sa.Text, nullable=False, index=True),
    sa.Column("subscription_id", sa.Text, nullable=False),
    sa.Column("invoice_id", sa.Text, sa.ForeignKey("invoices.invoice_id"), nullable=False),
    sa.Column("amount_minor", sa.BigInteger, nullable=False),
    _currency(),
    _ts("redeemed_at", nullable=False),
    sa.CheckConstraint("amount_minor > 0", name="amount_positive"),
)

# ---------------------------------------------------------------------------------------------- payments

# Written *before* the provider is called, in the transaction that finalises the invoice (or that
# handles payment.retry). The executor claims pending rows, calls the gateway with `idempotency_key`
# and records the outcome; an in-flight row whose lease expired is reconciled by lookup, never re-sent
# blind (rule 4).
payment_attempts = sa.Table(
    "payment_attempts", metadata,
    sa.Column("attempt_id", sa.Text, primary_key=True, comment="derived from (invoice_id, attempt_no)"),
    sa.Column("invoice_id", sa.Text, sa.ForeignKey("invoices.invoice_id"), nullable=False),
    sa.Column("attempt_no", sa.Integer, nullable=False),
    sa.Column("subscription_id", sa.Text, nullable=False),
    sa.Column("customer_id", sa.Text, nullable=False),
    sa.Column("amount_minor", sa.BigInteger, nullable=False),
    _currency(),
    sa.Column("payment_method_id", sa.Text),
    sa.Column("idempotency_key", sa.Text, nullable=False, unique=True),
    sa.Column("status", sa.Text, nullable=False, server_default="pending"),
    sa.Column("reason", sa.Text, nullable=False, server_default="initial"),
    sa.Column("provider_ref", sa.Text),
    sa.Column("decline_code", sa.Text),
    sa.Column("hard_decline", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("error_message", sa.Text),
    sa.Column("dispatch_count", sa.Integer, nullable=False, server_default="0",
              comment="how many times the provider was called (> 1 only after reconciliation said none)"),
    _ts("requested_at", nullable=False, comment="the billing instant the charge was decided"),
    _ts("lease_until", comment="in_flight: the claim expires; another executor then reconciles"),
    sa.Column("claimed_by", sa.Text),
    _ts("dispatched_at"),
    _ts("completed_at"),
    created_at(),
    sa.UniqueConstraint("invoice_id", "attempt_no", name="uq_payment_attempts_invoice_attempt"),
    sa.CheckConstraint(_in("status", ATTEMPT_STATUSES), name="status"),
    sa.CheckConstraint("attempt_no >= 1", name="attempt_no"),
    sa.CheckConstraint("amount_minor > 0", name="amount_positive"),
)
# At most one successful charge per invoice, whatever happens above.
sa.Index("uq_payment_attempts_one_success", payment_attempts.c.invoice_id, unique=True,
         postgresql_where=payment_attempts.c.status == "succeeded")
sa.Index("ix_payment_attempts_workable", payment_attempts.c.status, payment_attempts.c.lease_until,
         postgresql_where=payment_attempts.c.status.in_(("pending", "in_flight", "unknown")))
# The executor's queue, oldest first: a claim walks its head instead of sorting every workable attempt.
sa.Index("ix_payment_attempts_queue", payment_attempts.c.created_at,
         postgresql_where=payment_attempts.c.status.in_(("pending", "in_flight", "unknown")))

# NOTE: a statement that finds attempts by a key (attempt id, invoice id) states a status condition through these:
# `(status IN (...)) IS TRUE` means the same for the NOT NULL column but is not read as implying the partial
# indexes above. Otherwise, with statistics taken while nothing was queued (every month-end run: the queue fills
# faster than autoanalyze, and not at all once the table is large), the planner costed those indexes at one row
# and walked the whole queue, filtering on the key: 5.6 ms for one attempt's update with 50,000 queued, and the
# executor's claim and round of outcomes were PostgreSQL's two costliest statements in a 50k billing run (13.7
# and 9.6 ms a call). A statement that selects by status alone (the queue's head) keeps the plain form.
def attempt_status_by_key_sql(condition: str) -> str:
    """`condition` (SQL text over an attempt's status) in the form that leaves the queue's indexes alone."""
    return f"({condition}) IS TRUE"


def attempt_status_by_key(statuses: Iterable[str]) -> sa.ColumnElement[bool]:
    """`status IN statuses` in the form that leaves the queue's indexes alone."""
    return payment_attempts.c.status.in_(sorted(statuses)).is_(sa.true())


# ------------------------------------------------------------------------------------------ credit notes

CREDIT_NOTE_REASONS = ("duplicate", "fraudulent", "order_change", "product_unsatisfactory")
REFUND_STATUSES = ("pending", "in_flight", "succeeded", "failed", "unknown")

# A credit note against a finalised invoice (shared/domain/credit_note.py), written by the worker that owns
# the invoice's subscription. Numbers are gapless per issuer from the invoice counters' table under the
# issuer key "<issuer>:credit_notes"; total = reduced + refunded + credited.
credit_notes = sa.Table(
    "credit_notes", metadata,
    sa.Column("credit_note_id", sa.Text, primary_key=True, comment="derived from the issuing command"),
    sa.Column("invoice_id", sa.Text, sa.ForeignKey("invoices.invoice_id"), nullable=False, index=True),
    sa.Column("subscription_id", sa.Text, nullable=False),
    sa.Column("customer_id", sa.Text, nullable=False, index=True),
    sa.Column("issuer", sa.Text, nullable=False, server_default="default"),
    sa.Column("number", sa.Text, nullable=False),
    sa.Column("number_seq", sa.BigInteger, nullable=False),
    _currency(),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("memo", sa.Text),
    sa.Column("subtotal_minor", sa.BigInteger, nullable=False),
    sa.Column("tax_minor", sa.BigInteger, nullable=False),
    sa.Column("total_minor", sa.BigInteger, nullable=False),
    sa.Column("reduced_minor", sa.BigInteger, nullable=False, comment="lowered what the invoice still owed"),
    sa.Column("refunded_minor", sa.BigInteger, nullable=False, comment="given back through the gateway"),
    sa.Column("credited_minor", sa.BigInteger, nullable=False, comment="to the customer balance"),
    sa.Column("refund_status", sa.Text, comment="the refund's status (None: nothing refunded)"),
    sa.Column("refund_ref", sa.Text, comment="the provider's refund id"),
    _ts("issued_at", nullable=False),
    created_at(),
    sa.UniqueConstraint("issuer", "number", name="uq_credit_notes_issuer_number"),
    sa.CheckConstraint(_in("reason", CREDIT_NOTE_REASONS), name="reason"),
    sa.CheckConstraint("total_minor > 0 AND total_minor = subtotal_minor + tax_minor", name="total"),
    sa.CheckConstraint("reduced_minor >= 0 AND refunded_minor >= 0 AND credited_minor >= 0", name="parts"),
    sa.CheckConstraint("total_minor = reduced_minor + refunded_minor + credited_minor", name="split"),
)

credit_note_lines = sa.Table(
    "credit_note_lines", metadata,
    sa.Column("credit_note_id", sa.Text, sa.ForeignKey("credit_notes.credit_note_id"), nullable=False),
    sa.Column("line_no", sa.SmallInteger, nullable=False),
    sa.Column("invoice_line_no", sa.SmallInteger, comment="None: a part of a whole-invoice amount"),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("amount_minor", sa.BigInteger, nullable=False),
    _currency(),
    sa.PrimaryKeyConstraint("credit_note_id", "line_no"),
)

# A refund is written *before* the provider is called, in the transaction that issues its credit note; the
# refund executor (services/billing_worker/entrypoints/refunds.py) claims pending rows and calls the gateway
# with `idempotency_key` (derived from the credit note id), like payment attempts.
refunds = sa.Table(
    "refunds", metadata,
    sa.Column("refund_id", sa.Text, primary_key=True),
    sa.Column("credit_note_id", sa.Text, sa.ForeignKey("credit_notes.credit_note_id"), nullable=False,
              unique=True),
    sa.Column("invoice_id", sa.Text, nullable=False),
    sa.Column("subscription_id", sa.Text, nullable=False),
    sa.Column("customer_id", sa.Text, nullable=False),
    sa.Column("amount_minor", sa.BigInteger, nullable=False),
    _currency(),
    sa.Column("payment_ref", sa.Text, comment="the paid invoice's provider object (Stripe: PaymentIntent)"),
    sa.Column("idempotency_key", sa.Text, nullable=False, unique=True),
    sa.Column("status", sa.Text, nullable=False, server_default="pending"),
    sa.Column("provider_ref", sa.Text, comment="the provider's refund id"),
    sa.Column("error_message", sa.Text),
    sa.Column("dispatch_count", sa.Integer, nullable=False, server_default="0"),
    _ts("requested_at", nullable=False),
    _ts("lease_until"),
    _ts("completed_at"),
    created_at(),
    sa.CheckConstraint(_in("status", REFUND_STATUSES), name="status"),
    sa.CheckConstraint("amount_minor > 0", name="amount_positive"),
)
sa.Index("ix_refunds_workable", refunds.c.status, refunds.c.lease_until,
         postgresql_where=refunds.c.status.in_(("pending", "in_flight", "unknown")))

# The simulated provider's refunds (its own books, like its charges).
simulated_gateway_refunds = sa.Table(
    "simulated_gateway_refunds", metadata,
    sa.Column("idempotency_key", sa.Text, primary_key=True),
    sa.Column("payment_ref", sa.Text, nullable=False, index=True),
    sa.Column("provider_ref", sa.Text, nullable=False),
    sa.Column("amount_minor", sa.BigInteger, nullable=False),
    _currency(),
    created_at(),
)

# The *simulated provider's* own books (shared/adapters/payments/simulated.py), kept in PostgreSQL so that
# they outlive a killed worker like a real provider's would. The engine never reads them; crash tests do,
# to count the charges the provider actually made.
simulated_gateway_charges = sa.Table(
    "simulated_gateway_charges", metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("idempotency_key", sa.Text, nullable=False, unique=True),
    sa.Column("invoice_id", sa.Text, nullable=False, index=True),
    sa.Column("customer_id", sa.Text, nullable=False),
    sa.Column("payment_method_id", sa.Text, nullable=False),
    sa.Column("provider_ref", sa.Text, nullable=False, index=True),
    sa.Column("succeeded", sa.Boolean, nullable=False),
    sa.Column("amount_minor", sa.BigInteger, nullable=False),
    _currency(),
    sa.Column("decline_code", sa.Text),
    sa.Column("hard_decline", sa.Boolean, nullable=False, server_default=sa.false()),
    created_at(),
)

# Per-customer scripts of the simulated provider (the demo sets them): behave like this payment method.
simulated_gateway_scripts = sa.Table(
    "simulated_gateway_scripts", metadata,
    sa.Column("customer_id", sa.Text, primary_key=True),
    sa.Column("payment_method_id", sa.Text, nullable=False),
)

# ------------------------------------------------------------------------------------------- scheduler

# What the scheduler already put on commands.v1 (one row per subscription, kind and due instant), so a
# tick does not produce the same command twice; the command's event id is derived from the same key, so a
# re-emission after a crash between produce and insert is deduplicated downstream.
scheduled_commands = sa.Table(
    "scheduled_commands", metadata,
    sa.Column("subscription_id", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    _ts("due_at", nullable=False),
    sa.Column("event_id", sa.Uuid, nullable=False, unique=True),
    _ts("emitted_at", nullable=False),
    sa.PrimaryKeyConstraint("subscription_id", "kind", "due_at"),
)

# ---------------------------------------------------------------------------------------------- audit

# Every billing decision, append-only (who, what, on which entity, with which command). The edge keeps
# its own `audit_log` of API calls; this one records what the worker decided.
billing_audit_log = sa.Table(
    "billing_audit_log", metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    _ts("occurred_at", nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("entity_type", sa.Text, nullable=False),
    sa.Column("entity_id", sa.Text, nullable=False),
    sa.Column("subscription_id", sa.Text),
    sa.Column("customer_id", sa.Text),
    sa.Column("command_id", sa.Text),
    sa.Column("detail", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    created_at(),
)
sa.Index("ix_billing_audit_log_entity", billing_audit_log.c.entity_type, billing_audit_log.c.entity_id)
sa.Index("ix_billing_audit_log_subscription", billing_audit_log.c.subscription_id)

# ---------------------------------------------------------------------------------- append-only triggers

_FORBID_CHANGES = sa.DDL(  # type: ignore[no-untyped-call]
    """
CREATE OR REPLACE FUNCTION billing_forbid_update_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'table %% is append-only (%% refused)', TG_TABLE_NAME, TG_OP
    USING ERRCODE = 'integrity_constraint_violation';
END $$;
""")

for _table in (credit_entries, billing_audit_log, subscription_history, customer_balance_entries):
    sa.event.listen(_table, "after_create", _FORBID_CHANGES)
    sa.event.listen(_table, "after_create", sa.DDL(  # type: ignore[no-untyped-call]
        f"CREATE TRIGGER {_table.name}_append_only BEFORE UPDATE OR DELETE ON {_table.name} "
        "FOR EACH ROW EXECUTE FUNCTION billing_forbid_update_delete()"))

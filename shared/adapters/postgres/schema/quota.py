"""Tables of the quota area: report credits (hard monthly quotas per org and per user).

The counters are keyed by (org, calendar month start in the org's zone), so a month rolls over without any
job: the first request of a month simply finds no row for it. Every admission is one conditional write
(see ``shared.adapters.postgres.quota_store``); the CHECK constraints below are the backstop that makes
an over-admission impossible even if that write were wrong.
"""

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, UUID

from .base import created_at, metadata

# One row per org on a report plan or trial. `version` is bumped by every write that changes what the
# quota rule would decide (a consumption, a plan, limit, threshold or time-zone change, a top-up): the
# consumption write is conditional on it, so a decision is only committed on the state it was made on.
quota_orgs = sa.Table(
    "quota_orgs", metadata,
    sa.Column("org_id", sa.Text, primary_key=True),
    sa.Column("plan_id", sa.Text, comment="catalog plan id (reports_basic, ...); NULL: trial or nothing"),
    sa.Column("plan_monthly_reports", sa.Integer),
    sa.Column("per_user_monthly_limit", sa.Integer),
    sa.Column("timezone", sa.Text, nullable=False, server_default="UTC"),
    sa.Column("trial_started_at", sa.DateTime(timezone=True)),
    sa.Column("trial_reports", sa.Integer, nullable=False, server_default="10"),
    sa.Column("trial_days", sa.Integer, nullable=False, server_default="14"),
    sa.Column("trial_used", sa.Integer, nullable=False, server_default="0"),
    sa.Column("alert_thresholds", ARRAY(sa.Integer), nullable=False, server_default="{80,100}"),
    sa.Column("subscription_id", sa.Text, comment="message key of its usage events; the org id if unset"),
    sa.Column("version", sa.BigInteger, nullable=False, server_default="0"),
    created_at(),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.CheckConstraint("plan_monthly_reports IS NULL OR plan_monthly_reports >= 0", name="plan_reports"),
    sa.CheckConstraint("(plan_id IS NULL) = (plan_monthly_reports IS NULL)", name="plan_pair"),
    sa.CheckConstraint("per_user_monthly_limit IS NULL OR per_user_monthly_limit >= 0", name="user_limit"),
    sa.CheckConstraint("trial_used >= 0 AND trial_used <= trial_reports", name="trial_used"),
)

# The org's counter for one calendar month. `carried_over` is the count already used when the plan last
# changed this month: a downgrade below it leaves nothing to run, but the reports already run stay legal.
quota_org_months = sa.Table(
    "quota_org_months", metadata,
    sa.Column("org_id", sa.Text, sa.ForeignKey("quota_orgs.org_id"), primary_key=True),
    sa.Column("month_start", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("month_end", sa.DateTime(timezone=True), nullable=False),
    sa.Column("plan_monthly_reports", sa.Integer, comment="the plan's allotment this month; NULL on trial"),
    sa.Column("top_ups", sa.Integer, nullable=False, server_default="0"),
    sa.Column("used", sa.Integer, nullable=False, server_default="0"),
    sa.Column("carried_over", sa.Integer, nullable=False, server_default="0"),
    sa.Column("leased", sa.Integer, nullable=False, server_default="0",
              comment="reports reserved by edge processes' live leases (quota_leases), not used yet"),
    sa.CheckConstraint("used >= 0 AND top_ups >= 0 AND carried_over >= 0 AND leased >= 0", name="counts"),
    sa.CheckConstraint("plan_monthly_reports IS NULL "
                       "OR used + leased <= GREATEST(plan_monthly_reports + top_ups, carried_over)", name="allotment"),
)

# A block of one org's month reserved by one edge process (`holder`), which admits against it from memory.
# Granted by a compare-and-set on `quota_org_months.leased` (the CHECK above holds used + leased to the
# allotment); each admission under it moves one report from `leased` to `used` and adds one to `consumed`
# in the same statement, and only while the lease is live by the DATABASE clock (`expires_at > now()`,
# `returned_at IS NULL`). Expired or revoked, what was not consumed goes back to the month (`returned_at`).
quota_leases = sa.Table(
    "quota_leases", metadata,
    sa.Column("lease_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("org_id", sa.Text, nullable=False),
    sa.Column("month_start", sa.DateTime(timezone=True), nullable=False),
    sa.Column("holder", sa.Text, nullable=False, comment="host:pid of the edge process"),
    sa.Column("granted", sa.Integer, nullable=False),
    sa.Column("consumed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("returned_at", sa.DateTime(timezone=True), comment="expired or revoked: the rest went back"),
    sa.CheckConstraint("granted > 0 AND consumed >= 0 AND consumed <= granted", name="consumed"),
)
sa.Index("ix_quota_leases_open", quota_leases.c.org_id, quota_leases.c.month_start,
         postgresql_where=quota_leases.c.returned_at.is_(None))

# One row per user and month. `limit_at_last_use` is the per-user limit the last admission was checked
# against, written by that same admission, so the CHECK holds the limit without a cross-table constraint.
quota_user_months = sa.Table(
    "quota_user_months", metadata,
    sa.Column("org_id", sa.Text, primary_key=True),
    sa.Column("month_start", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("used", sa.Integer, nullable=False, server_default="0"),
    sa.Column("limit_at_last_use", sa.Integer),
    sa.CheckConstraint("used >= 0", name="used"),
    sa.CheckConstraint("limit_at_last_use IS NULL OR used <= limit_at_last_use", name="user_limit"),
)

# One row per admitted report: the idempotency record (a retried enquiry id finds it and gets the same
# answer) and the audit of who used what. Denials are not stored: a denied enquiry may be retried later.
quota_consumptions = sa.Table(
    "quota_consumptions", metadata,
    sa.Column("org_id", sa.Text, primary_key=True),
    sa.Column("enquiry_id", sa.Text, primary_key=True),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("month_start", sa.DateTime(timezone=True), nullable=False),
    sa.Column("month_end", sa.DateTime(timezone=True), nullable=False),
    sa.Column("consumed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("org_allotment", sa.Integer, nullable=False),
    sa.Column("org_remaining", sa.Integer, nullable=False),
    sa.Column("user_limit", sa.Integer),
    sa.Column("user_remaining", sa.Integer),
    sa.Column("on_trial", sa.Boolean, nullable=False),
    # NOTE: not unique of its own: the id is a uuid5 of (org_id, enquiry_id) (the edge's quota_admission), which
    # the key already keeps unique, and nothing looks a row up by it; its index was a random-uuid insert per
    # admission, on the hot path.
    sa.Column("event_id", UUID(as_uuid=True), nullable=False, comment="its usage.recorded event's id"),
    created_at(),
)

# Append-only history of discretionary top-ups; the month row holds their sum. They expire with the month.
quota_top_ups = sa.Table(
    "quota_top_ups", metadata,
    sa.Column("top_up_id", sa.Text, primary_key=True),
    sa.Column("org_id", sa.Text, sa.ForeignKey("quota_orgs.org_id"), nullable=False, index=True),
    sa.Column("month_start", sa.DateTime(timezone=True), nullable=False),
    sa.Column("reports", sa.Integer, nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("granted_by", sa.Text, nullable=False),
    sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("reports > 0", name="reports"),
)

# Alerts sent, at most one per (org, period, kind, threshold, user): the unique key is what makes an alert
# exactly-once across retries, concurrent edges and restarts. `threshold_percent` is 0 and `user_id` is ''
# where they do not apply (NULLs would not collide in a unique constraint).
quota_alerts = sa.Table(
    "quota_alerts", metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("org_id", sa.Text, nullable=False),
    sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("threshold_percent", sa.Integer, nullable=False, server_default="0"),
    sa.Column("user_id", sa.Text, nullable=False, server_default=""),
    sa.Column("used", sa.Integer, nullable=False),
    sa.Column("allotment", sa.Integer, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("event_id", UUID(as_uuid=True), nullable=False, unique=True),
    sa.Column("fired_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("org_id", "period_start", "kind", "threshold_percent", "user_id"),
    sa.CheckConstraint("kind IN ('quota.threshold_reached', 'quota.limit_reached', "
                       "'quota.on_track_to_exceed')", name="kind"),
)


# --- usage tiers: included credits in money and spend caps (compute, the `inference` meter) -------------
#
# The spend counters are in the meter's quantity (inference: USD micros), so every comparison is an
# integer one; money appears only where the rule converts a limit to a quantity or a quantity to money.

# One row per org that set a cap or authorised spend. `version` is bumped by every write that changes
# what an authorisation would decide (a cap change, an authorisation): the authorise write is conditional
# on it, like the report-credit write on `quota_orgs.version`.
spend_accounts = sa.Table(
    "spend_accounts", metadata,
    sa.Column("org_id", sa.Text, primary_key=True),
    sa.Column("monthly_cap_minor", sa.BigInteger, comment="cap on pay-as-you-go spend per period; NULL: none"),
    sa.Column("currency", sa.Text, comment="currency of the cap"),
    sa.Column("version", sa.BigInteger, nullable=False, server_default="0"),
    created_at(),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.CheckConstraint("monthly_cap_minor IS NULL OR monthly_cap_minor >= 0", name="cap"),
    sa.CheckConstraint("(monthly_cap_minor IS NULL) = (currency IS NULL)", name="cap_currency"),
)

# The authorised spend of one org in one billing period. `observed_quantity` is the usage that reached
# the worker through Kafka (not authorised here) as last seen by an authorisation, `limit_quantity` the
# limit that authorisation was checked against: the CHECK holds every authorisation to its limit without
# a cross-table constraint (the backstop of the conditional write).
spend_periods = sa.Table(
    "spend_periods", metadata,
    sa.Column("org_id", sa.Text, sa.ForeignKey("spend_accounts.org_id"), primary_key=True),
    sa.Column("period_start", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("period_end", sa.DateTime(timezone=True), nullable=False),
    sa.Column("reserved_quantity", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("observed_quantity", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("limit_quantity", sa.BigInteger, comment="limit of the last authorisation; NULL: unlimited"),
    sa.CheckConstraint("reserved_quantity >= 0 AND observed_quantity >= 0", name="counts"),
    sa.CheckConstraint("limit_quantity IS NULL OR reserved_quantity + observed_quantity <= limit_quantity",
                       name="limit"),
)

# One row per authorisation: the idempotency record (a retried request id gets the same answer) and the
# link to its usage event (`transaction_id`), which tells whether the worker has materialised it yet.
spend_reservations = sa.Table(
    "spend_reservations", metadata,
    sa.Column("org_id", sa.Text, primary_key=True),
    sa.Column("request_id", sa.Text, primary_key=True),
    sa.Column("transaction_id", sa.Text, nullable=False),
    sa.Column("subscription_id", sa.Text, nullable=False),
    sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
    sa.Column("period_end", sa.DateTime(timezone=True), nullable=False),
    sa.Column("quantity", sa.BigInteger, nullable=False),
    sa.Column("limit_quantity", sa.BigInteger),
    sa.Column("spent_quantity", sa.BigInteger, nullable=False, comment="visible spend after this one"),
    sa.Column("reserved_at", sa.DateTime(timezone=True), nullable=False),
    # NOTE: derived from (org_id, request_id), unique by the key; no index of its own (see quota_consumptions)
    sa.Column("event_id", UUID(as_uuid=True), nullable=False, comment="its usage.recorded event's id"),
    # NOTE: taken while the write holds the org's account row (its compare-and-set), so an org's reservations
    # get increasing numbers in the order they commit; `spend_materialised` counts them up to a number. The
    # sequence must not be cached per session (a cached block would hand an org's later write a lower number).
    sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False, comment="commit order within the org"),
    created_at(),
    sa.CheckConstraint("quantity > 0", name="quantity"),
    sa.CheckConstraint("limit_quantity IS NULL OR spent_quantity <= limit_quantity", name="limit"),
)
# NOTE: period first: a read looks rows up by org and period (equality on both) and reads those after a number
# (`spend_materialised`), and an index that led with the org alone let a generic plan, costed on the average
# org, read a big org's reservations by org and filter them by request id instead of probing the key (see
# quota_store's NOTE on lists of keys).
sa.Index("ix_spend_reservations_period", spend_reservations.c.period_start, spend_reservations.c.org_id,
         spend_reservations.c.seq)

# How much of an org's authorised spend in a period the worker has materialised, counted up to a reservation
# number: every reservation of the (org, period) numbered up to `through_seq` has its usage event in
# `usage_events`, and together they reserved `quantity`. A read counts only the reservations after it (those
# whose events may still be on their way) and moves it on (`SpendStore.usage`), so reading an org's spend does
# not get slower as its month's authorisations pile up. Written by reads only, never by the authorisation
# write, so the two never wait for each other.
spend_materialised = sa.Table(
    "spend_materialised", metadata,
    sa.Column("org_id", sa.Text, primary_key=True),
    sa.Column("period_start", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("through_seq", sa.BigInteger, nullable=False),
    sa.Column("quantity", sa.BigInteger, nullable=False),
    sa.CheckConstraint("through_seq >= 0 AND quantity >= 0", name="counts"),
)

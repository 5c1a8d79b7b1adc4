"""Which subscription of a customer is "live" and which one its usage goes to: one definition, read by the
edge's usage routing, the spend gate and the Stripe webhook translation.

# NOTE: a live subscription is any that is not cancelled (trialing, active, past_due, paused); when a
# customer has several, the newest (by `created_at`) is the one usage is billed to. Whether it accepts
# usage right now (paused does not) is the caller's rule.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from shared.adapters.postgres.schema.billing import subscriptions
from shared.adapters.postgres.schema.core import customers


def is_live() -> sa.ColumnElement[bool]:
    """The condition on `subscriptions` that a row is live (not cancelled)."""
    return subscriptions.c.status != "cancelled"


def newest_live_subscription(customer_id: Any, *columns: sa.ColumnElement[Any]) -> sa.Select[Any]:
    """SELECT `columns` (default: every column) of the customer's newest live subscription (0 or 1 row).

    `customer_id` is a value or a column of an enclosing query (then use `.lateral()`: one lookup per row).
    """
    return (sa.select(*(columns or tuple(subscriptions.c)))
            .where(subscriptions.c.customer_id == customer_id, is_live())
            .order_by(subscriptions.c.created_at.desc()).limit(1))


def live_subscriptions_of_stripe_customer(conn: sa.Connection, stripe_customer_id: str) -> list[tuple[str, str]]:
    """(subscription_id, customer_id) of every live subscription of a Stripe customer, by subscription id."""
    rows = conn.execute(
        sa.select(subscriptions.c.subscription_id, subscriptions.c.customer_id)
        .join(customers, customers.c.customer_id == subscriptions.c.customer_id)
        .where(customers.c.stripe_customer_id == stripe_customer_id, is_live())
        .order_by(subscriptions.c.subscription_id)).all()
    return [(row.subscription_id, row.customer_id) for row in rows]

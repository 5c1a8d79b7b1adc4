"""Which subscriptions a period close applies to is written once, in the domain (CLOSABLE_STATUSES): the
scheduler's due-period query binds the same set rather than an SQL list of its own."""

from __future__ import annotations

import pytest

from services.billing_worker.entrypoints import scheduler
from shared.domain.subscription import CLOSABLE_STATUSES, SubscriptionStatus

pytestmark = pytest.mark.unit


def test_a_close_applies_to_live_subscriptions_paused_included_never_to_trials_or_cancelled_ones():
    assert CLOSABLE_STATUSES == {SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE, SubscriptionStatus.PAUSED}


def test_the_scheduler_asks_for_the_period_ends_of_exactly_the_domains_closable_statuses():
    from shared.adapters.postgres.schema.billing import subscriptions

    index = next(i for i in subscriptions.indexes if i.name == "ix_subscriptions_due_period_end")
    assert set(index.dialect_options["postgresql"]["where"].right.value) == \
        {status.value for status in CLOSABLE_STATUSES}  # the partial index the scan needs covers the same set
    bound = scheduler._DUE_PERIOD_ENDS.compile().binds["closable"]
    assert bound.expanding and bound.literal_execute  # literals, as the partial index's predicate is written
    assert set(bound.value) == {status.value for status in CLOSABLE_STATUSES}
    assert "'active'" not in str(scheduler._DUE_PERIOD_ENDS)  # no second copy of the list in the SQL

"""The scheduler's trial end, now that it closes the trial's usage (issue 14 defect: trial usage billed as late
usage): it waits the period-close grace like a close, so usage still in the backlog is rated against the trial's
credits, and the trial's credits are not expired by a separate command before the trial end has rated against
them (the trial end settles them in its own transaction)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from services.billing_worker.entrypoints.scheduler import Scheduler
from shared.adapters.clock import DatabaseClock
from shared.config import Settings
from shared.contracts.messages import CreateSubscription, EndTrial
from tests.integration.worker.billing_support import Billing

pytestmark = pytest.mark.integration

START = datetime(2031, 1, 1, tzinfo=UTC)  # beyond any running clock: only due() looks at it
TRIAL_END = START + timedelta(days=14)


def kinds(scheduler: Scheduler, sub: str, at: datetime) -> list[str]:
    return sorted(d.kind for d in scheduler.due(at, 10_000) if d.subscription_id == sub)


def test_a_trial_end_waits_the_close_grace_and_its_credits_expire_with_it_not_before(
        settings: Settings, engine: sa.Engine) -> None:
    billing = Billing(engine)
    sub = f"sub_trial_{uuid.uuid4().hex[:8]}"
    created = billing.send(CreateSubscription(subscription_id=sub, customer_id=f"cus_{sub}", plan_id="pro",
                                              currency="USD", trial_days=14, start_at=START,
                                              payment_method_id="pm_card_visa"), START)
    assert billing.outcome(created).status == "applied"
    clock = DatabaseClock(engine, START)
    prompt = Scheduler(settings, engine, clock)
    graceful = Scheduler(settings.model_copy(update={"period_close_grace_s": 3600.0}), engine, clock)

    assert kinds(prompt, sub, TRIAL_END) == ["trial.end"]  # no grace (the default): due at the trial end
    assert kinds(graceful, sub, TRIAL_END + timedelta(minutes=59)) == []  # the trial's credits wait too
    assert kinds(graceful, sub, TRIAL_END + timedelta(minutes=60)) == ["trial.end"]

    ended = billing.send(EndTrial(subscription_id=sub, customer_id=f"cus_{sub}", trial_end=TRIAL_END),
                         TRIAL_END + timedelta(minutes=60))

    assert billing.outcome(ended).status == "applied"
    # the trial end settled its credits: nothing left to expire, and no trial to end
    assert kinds(graceful, sub, TRIAL_END + timedelta(hours=2)) == []

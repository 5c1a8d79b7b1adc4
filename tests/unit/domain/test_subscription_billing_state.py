"""What the subscription keeps for billing beside its status: the payment method on file, a credit carried
to the next invoice, when it was paused and why it was cancelled."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.adapters.catalog_file import load_default_catalog
from shared.domain.errors import InvalidValueError
from shared.domain.ids import CustomerId, SubscriptionId
from shared.domain.subscription import Subscription, SubscriptionStatus

pytestmark = pytest.mark.unit

CATALOG = load_default_catalog()
JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
JAN_16 = datetime(2026, 1, 16, tzinfo=UTC)


def subscribe(payment_method_id: str | None = "pm_card_visa") -> Subscription:
    return Subscription.start(subscription_id=SubscriptionId("sub_1"), customer_id=CustomerId("cus_1"),
                              plan=CATALOG.plan("basic_monthly"), at=JAN_1, trial_days=0,
                              payment_method_id=payment_method_id)


def test_a_subscription_starts_with_the_payment_method_it_was_created_with_and_nothing_carried() -> None:
    sub = subscribe()
    assert (sub.payment_method_id, sub.carried_credit_minor, sub.paused_at, sub.cancel_reason) == (
        "pm_card_visa", 0, None, None)


def test_a_new_payment_method_replaces_the_old_one_and_forgetting_it_returns_what_was_on_file() -> None:
    sub = subscribe()
    sub.use_payment_method("pm_card_mastercard")

    assert sub.forget_payment_method() == "pm_card_mastercard"
    assert sub.payment_method_id is None
    assert sub.forget_payment_method() is None


def test_changing_the_payment_method_records_no_event() -> None:
    sub = subscribe()
    sub.pull_events()
    sub.use_payment_method("pm_card_mastercard")
    sub.forget_payment_method()
    assert sub.pull_events() == []


def test_carried_credits_add_up_and_are_taken_once() -> None:
    sub = subscribe()
    sub.carry_credit(250)
    sub.carry_credit(100)

    assert sub.take_carried_credit() == 350
    assert (sub.carried_credit_minor, sub.take_carried_credit()) == (0, 0)


@pytest.mark.parametrize("amount", [-1, True, 1.5])
def test_a_carried_credit_is_a_non_negative_int_of_minor_units(amount: object) -> None:
    with pytest.raises(InvalidValueError):
        subscribe().carry_credit(amount)  # type: ignore[arg-type]


def test_pausing_records_when_and_resuming_forgets_it() -> None:
    sub = subscribe()
    sub.pause(at=JAN_16)
    assert (sub.status, sub.paused_at) == (SubscriptionStatus.PAUSED, JAN_16)

    sub.resume(at=JAN_16 + timedelta(days=1))
    assert (sub.status, sub.paused_at) == (SubscriptionStatus.ACTIVE, None)


def test_an_immediate_cancellation_keeps_its_reason() -> None:
    sub = subscribe()
    sub.cancel(at=JAN_16, reason="dunning_gave_up")
    assert (sub.status, sub.cancel_reason) == (SubscriptionStatus.CANCELLED, "dunning_gave_up")


def test_a_cancellation_at_period_end_and_the_close_that_applies_it_record_no_reason() -> None:
    # NOTE: as stored before the reason moved into the aggregate: only an immediate cancellation has one.
    sub = subscribe()
    sub.cancel(at=JAN_16, at_period_end=True, reason="too expensive")
    assert sub.cancel_reason is None

    sub.advance_period(at=sub.current_period.end)
    assert (sub.status, sub.cancel_reason) == (SubscriptionStatus.CANCELLED, None)

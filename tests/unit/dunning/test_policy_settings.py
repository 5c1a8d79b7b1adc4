"""The dunning schedule is configuration, validated by the domain."""

import pytest

from services.dunning.bootstrap import policy_from_settings
from shared.config import Settings
from shared.domain.errors import DomainError

pytestmark = pytest.mark.unit


def test_the_default_schedule_retries_on_days_3_5_7_notifies_on_1_3_7_and_gives_up_on_day_14():
    policy = policy_from_settings(Settings())
    assert (policy.retry_offsets_days, policy.notify_offsets_days, policy.give_up_after_days) == (
        (3, 5, 7), (1, 3, 7), 14)


def test_an_operator_can_shorten_the_campaign_through_settings():
    policy = policy_from_settings(Settings(dunning_retry_days=(2,), dunning_notify_days=(1,), dunning_give_up_day=5))
    assert (policy.retry_offsets_days, policy.give_up_after_days) == ((2,), 5)


def test_a_retry_scheduled_after_the_give_up_day_is_refused_at_start():
    with pytest.raises(DomainError):
        policy_from_settings(Settings(dunning_retry_days=(3, 20), dunning_give_up_day=14))

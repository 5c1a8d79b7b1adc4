"""Which attempt statuses a reported outcome can never move again: the worker skips writing those (the
executor's own outcomes), and writes every other one (a webhook's success still wins over a decline)."""

from __future__ import annotations

import pytest

from services.billing_worker.adapters.payment_attempts import settled_for_good
from shared.domain.payment_attempt import Transition

SUCCESS, FAILURE = Transition.ACCEPT_REPORTED_SUCCESS, Transition.ACCEPT_REPORTED_FAILURE


@pytest.mark.parametrize(("transition", "status", "for_good"), [
    (SUCCESS, "succeeded", True), (SUCCESS, "cancelled", True),
    (SUCCESS, "declined", False),  # a success learned afterwards wins over a decline
    (SUCCESS, "pending", False), (SUCCESS, "in_flight", False), (SUCCESS, "unknown", False),
    (FAILURE, "declined", True), (FAILURE, "succeeded", True), (FAILURE, "cancelled", True),
    (FAILURE, "pending", False), (FAILURE, "in_flight", False), (FAILURE, "unknown", False),
])
def test_a_reported_outcome_is_skipped_only_on_an_attempt_it_can_never_move(
        transition: Transition, status: str, for_good: bool) -> None:
    assert settled_for_good(transition, status) is for_good

"""An operator's payment retry (attempt reason ``manual``) beside dunning's schedule, on the in-memory store:
its failure does not count as a failure of the case, so the schedule goes on exactly as without it."""

from __future__ import annotations

import pytest

from services.dunning.handlers import DunningHandlers, Outcome
from shared.adapters.clock import ManualClock
from shared.domain.dunning import DunningPolicy
from tests.unit.dunning.memory_store import InMemoryDunningStore
from tests.unit.dunning.scenarios import CUSTOMER_EMAIL, FIRST_FAILURE, World, unique_ids
from tests.unit.dunning.test_scenarios_in_memory import InMemoryProbe

pytestmark = pytest.mark.unit


@pytest.fixture
def store() -> InMemoryDunningStore:
    return InMemoryDunningStore()


@pytest.fixture
def world(store: InMemoryDunningStore) -> World:
    subscription_id, customer_id, invoice_id = unique_ids()
    store.customer_emails[customer_id] = CUSTOMER_EMAIL
    clock = ManualClock(FIRST_FAILURE)
    return World(lambda: DunningHandlers(store, clock, policy=DunningPolicy(), channel="log"), clock,
                 InMemoryProbe(store), subscription_id, customer_id, invoice_id)


def test_a_failed_operator_retry_leaves_the_schedule_as_it_was(world: World, store: InMemoryDunningStore) -> None:
    world.payment_failed(attempt_no=1)
    world.clock.set(world.day(1))
    store.manual_attempts.add((world.invoice_id, 2))

    assert world.payment_failed(attempt_no=2) is Outcome.IGNORED  # the operator's retry, declined

    world.clock.set(world.day(3))
    world.handlers.run_due()
    [retry] = world.retries()
    # dunning asks for number 2 (it does not count the operator's); the worker gives it the next free one
    assert (retry.payload["attempt_no"], retry.payload["reason"], retry.occurred_at) == (2, "scheduled",
                                                                                        world.day(3))
    # its outcome is awaited as before: the day-3 reminder waits for it (before: the operator's failure
    # counted as that outcome and the reminder went out beside the retry)
    assert [key for key, _, _ in world.probe.notices()] == ["notify:1"]
    world.payment_failed(attempt_no=3)
    assert [key for key, _, _ in world.probe.notices()] == ["notify:1", "notify:3"]
    assert world.probe.case_status(world.invoice_id) == "open"

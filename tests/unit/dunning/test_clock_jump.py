"""A long clock jump plays a dunning case's schedule in billing-time order (issue 12, defect 8).

One ``POST /v1/clock/advance {"days": 31}`` used to find the case on day 31 and give up at once; now the
case acts at each of its wake-up instants in turn: day 1, day 3 (retry), then day 5 only after the day-3
retry's outcome came back, ... and the give-up on day 14 last. ``ClockJumpScenarios`` runs on the
in-memory store here and on PostgreSQL in tests/integration/dunning/test_clock_jump_postgres.py.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.dunning.handlers import DunningHandlers, Outcome
from shared.adapters.clock import ManualClock
from shared.contracts.envelope import new_envelope
from shared.domain.dunning import DunningPolicy
from tests.unit.dunning.memory_store import InMemoryDunningStore
from tests.unit.dunning.scenarios import CUSTOMER_EMAIL, FIRST_FAILURE, World, unique_ids
from tests.unit.dunning.test_scenarios_in_memory import InMemoryProbe


class ClockJumpScenarios:
    """Subclasses provide a ``world`` fixture (see scenarios.World)."""

    def test_one_jump_past_the_give_up_day_plays_each_retry_in_order_and_gives_up_last(self, world: World) -> None:
        world.payment_failed(attempt_no=1)
        world.clock.set(world.day(31))

        world.handlers.run_due()
        world.handlers.run_due()  # the day-3 retry is in flight: nothing later happens meanwhile
        assert [(c.type, c.occurred_at) for c in world.probe.commands()] == [("payment.retry", world.day(3))]
        assert [key for key, _, _ in world.probe.notices()] == ["notify:1"]  # notify:3 waits for the retry

        for _ in range(3):
            world.answer_retries(succeed=False)
            world.handlers.run_due()

        assert [(c.type, c.payload.get("attempt_no"), c.occurred_at) for c in world.probe.commands()] == [
            ("payment.retry", 2, world.day(3)), ("payment.retry", 3, world.day(5)),
            ("payment.retry", 4, world.day(7)), ("dunning.give_up", None, world.day(14))]
        assert [key for key, _, _ in world.probe.notices()] == ["notify:1", "notify:3", "notify:7", "notify:final"]
        assert world.probe.case_status(world.invoice_id) == "given_up"

    def test_after_one_jump_a_day_three_retry_that_succeeds_recovers_the_case_without_a_give_up(
            self, world: World) -> None:
        world.payment_failed(attempt_no=1)
        world.clock.set(world.day(31))

        world.handlers.run_due()
        world.answer_retries(succeed=True)
        world.handlers.run_due()

        assert [(c.type, c.occurred_at) for c in world.probe.commands()] == [("payment.retry", world.day(3))]
        assert world.probe.case_status(world.invoice_id) == "recovered"

    def test_the_give_up_waits_for_the_outcome_of_a_retry_still_in_flight(self, world: World) -> None:
        world.payment_failed(attempt_no=1, decline_code="stolen_card", hard=True)  # no scheduled retries
        world.run_until(world.day(13.5))
        assert world.payment_method_updated() is Outcome.APPLIED
        world.clock.set(world.day(20))

        world.handlers.run_due()
        assert [c.type for c in world.probe.commands()] == ["payment.retry"]

        world.answer_retries(succeed=False)
        world.handlers.run_due()
        assert [(c.type, c.occurred_at) for c in world.probe.commands()] == [
            ("payment.retry", world.day(13.5)), ("dunning.give_up", world.day(14))]


class TestClockJumpInMemory(ClockJumpScenarios):
    @pytest.fixture
    def world(self) -> World:
        subscription_id, customer_id, invoice_id = unique_ids()
        store = InMemoryDunningStore({customer_id: CUSTOMER_EMAIL})
        clock = ManualClock(FIRST_FAILURE)
        return World(lambda: DunningHandlers(store, clock, policy=DunningPolicy(), channel="log"), clock,
                     InMemoryProbe(store), subscription_id, customer_id, invoice_id)


pytestmark = pytest.mark.unit


def test_a_timer_run_moves_past_cases_that_stay_due_instead_of_picking_them_again() -> None:
    store = InMemoryDunningStore()
    clock = ManualClock(FIRST_FAILURE)
    handlers = DunningHandlers(store, clock, policy=DunningPolicy())
    for n in range(5):
        handlers.handle(new_envelope("invoice.payment_failed", {
            "invoice_id": f"in_{n}", "subscription_id": f"sub_{n}", "customer_id": f"cus_{n}", "status": "open",
            "total_minor": 100, "currency": "USD", "attempt_no": 1}, producer="billing-worker",
            occurred_at=FIRST_FAILURE))
    clock.set(FIRST_FAILURE + timedelta(days=6))
    handlers.run_due(batch_size=2)
    # Every case stays due (day 5 waits for the day-3 retry's outcome), yet a run ends: the cursor moves
    # past the cases it saw instead of taking the same first batch again and again.
    assert handlers.run_due(batch_size=2) == 5
    assert len(store.state.commands) == 5

"""Dunning scenarios on a fake clock, through the real handlers and the real policy.

One suite, two stores: ``test_scenarios_in_memory`` runs it on the in-memory store (unit, no I/O) and
``tests/integration/dunning/test_scenarios_postgres`` on PostgreSQL, so the two cannot drift.
The test plays the billing worker: it answers each ``payment.retry`` command with the outcome event the
worker would publish (``invoice.payment_failed`` or ``invoice.paid``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import pytest

from services.dunning.handlers import DunningHandlers, Outcome
from shared.adapters.clock import ManualClock
from shared.contracts.envelope import Envelope, new_envelope

FIRST_FAILURE = datetime(2026, 3, 2, 9, 15, tzinfo=UTC)
CUSTOMER_EMAIL = "ada@example.com"


class Probe(Protocol):
    """What a scenario reads back from a store (per backend)."""

    def commands(self) -> list[Envelope]: ...

    def notices(self) -> list[tuple[str, str, str | None]]:
        """(action key, kind, recipient) in the order decided."""
        ...

    def case_status(self, invoice_id: str) -> str | None: ...

    def set_unsettled_attempt(self, invoice_id: str, unsettled: bool) -> None: ...


@dataclass
class World:
    handlers_factory: Callable[[], DunningHandlers]
    clock: ManualClock
    probe: Probe
    subscription_id: str
    customer_id: str
    invoice_id: str

    def __post_init__(self) -> None:
        self.handlers = self.handlers_factory()
        self._answered = 0

    def restart(self) -> None:
        """A new process: new handlers on the same store (nothing survives but the database)."""
        self.handlers = self.handlers_factory()

    def day(self, n: float) -> datetime:
        return FIRST_FAILURE + timedelta(days=n)

    def publish(self, type_: str, payload: dict[str, Any], envelope: Envelope | None = None) -> Outcome:
        envelope = envelope or new_envelope(type_, payload, producer="billing-worker", occurred_at=self.clock.now())
        return self.handlers.handle(envelope, source="test")

    def invoice_event(self, type_: str, **fields: Any) -> Envelope:
        payload = {"invoice_id": self.invoice_id, "subscription_id": self.subscription_id,
                   "customer_id": self.customer_id, "status": "open", "total_minor": 2000, "currency": "USD",
                   **fields}
        return new_envelope(type_, payload, producer="billing-worker", occurred_at=self.clock.now())

    def payment_failed(self, attempt_no: int, decline_code: str = "insufficient_funds",
                       hard: bool = False) -> Outcome:
        return self.publish("", {}, self.invoice_event("invoice.payment_failed", attempt_no=attempt_no,
                                                       decline_code=decline_code, hard_decline=hard))

    def invoice_paid(self) -> Outcome:
        return self.publish("", {}, self.invoice_event("invoice.paid", status="paid"))

    def payment_method_updated(self) -> Outcome:
        return self.publish("payment_method.updated", {"subscription_id": self.subscription_id,
                                                       "customer_id": self.customer_id,
                                                       "payment_method_id": "pm_card_visa"})

    def retries(self) -> list[Envelope]:
        return [c for c in self.probe.commands() if c.type == "payment.retry"]

    def answer_retries(self, succeed: bool) -> None:
        """Play the worker: answer every retry command not answered yet."""
        for retry in self.retries()[self._answered:]:
            self._answered += 1
            if succeed:
                self.invoice_paid()
            else:
                self.payment_failed(retry.payload["attempt_no"])

    def run_until(self, until: datetime, *, retries_succeed: bool = False,
                  step: timedelta = timedelta(hours=1)) -> None:
        """Move the fake clock hour by hour, running the timer and answering retries like the worker."""
        while self.clock.now() < until:
            self.clock.set(min(until, self.clock.now() + step))
            self.handlers.run_due()
            self.answer_retries(retries_succeed)


class DunningScenarios:
    """Subclasses provide a ``world`` fixture (a store, handlers on a ManualClock at FIRST_FAILURE)."""

    # --- the scenarios of issue 6 -------------------------------------------------------------------------

    def test_failure_then_day_three_retry_that_succeeds_closes_the_case(self, world: World) -> None:
        assert world.payment_failed(attempt_no=1) is Outcome.APPLIED
        assert world.probe.case_status(world.invoice_id) == "open"

        world.run_until(world.day(3), retries_succeed=True)

        [retry] = world.retries()
        assert retry.payload["attempt_no"] == 2
        assert retry.payload["reason"] == "scheduled"
        assert retry.occurred_at == world.day(3)
        assert world.probe.case_status(world.invoice_id) == "recovered"
        world.run_until(world.day(20))
        assert len(world.probe.commands()) == 1
        # No "payment failed" on day 3: that reminder waits for the retry's outcome, and the retry succeeded
        # (before: notify:3 went out at the same instant as the retry that collected the invoice).
        assert [key for key, _, _ in world.probe.notices()] == ["notify:1"]

    def test_the_day_three_reminder_follows_a_failed_retry_at_its_slot(self, world: World) -> None:
        world.payment_failed(attempt_no=1)
        world.clock.set(world.day(3))
        world.handlers.run_due()
        assert [key for key, _, _ in world.probe.notices()] == ["notify:1"]  # the retry is in flight

        world.answer_retries(succeed=False)

        assert [key for key, _, _ in world.probe.notices()] == ["notify:1", "notify:3"]

    def test_four_failures_cancel_at_day_fourteen_with_reminders_on_days_1_3_7_and_a_final_notice(
            self, world: World) -> None:
        world.payment_failed(attempt_no=1)

        world.run_until(world.day(16))

        commands = world.probe.commands()
        assert [(c.type, c.occurred_at) for c in commands] == [
            ("payment.retry", world.day(3)), ("payment.retry", world.day(5)), ("payment.retry", world.day(7)),
            ("dunning.give_up", world.day(14))]
        assert [c.payload["attempt_no"] for c in commands[:3]] == [2, 3, 4]
        assert commands[3].payload == {"subscription_id": world.subscription_id, "customer_id": world.customer_id,
                                       "invoice_id": world.invoice_id}
        assert world.probe.notices() == [
            ("notify:1", "payment_failed", CUSTOMER_EMAIL), ("notify:3", "payment_failed", CUSTOMER_EMAIL),
            ("notify:7", "payment_failed", CUSTOMER_EMAIL), ("notify:final", "subscription_cancelled", CUSTOMER_EMAIL)]
        assert world.probe.case_status(world.invoice_id) == "given_up"

    def test_hard_decline_skips_retries_notifies_at_once_and_gives_up_on_day_fourteen(self, world: World) -> None:
        world.payment_failed(attempt_no=1, decline_code="stolen_card", hard=True)

        assert world.probe.notices() == [("notify:payment_method_required:1", "payment_method_required",
                                          CUSTOMER_EMAIL)]
        assert world.probe.commands() == []

        world.run_until(world.day(15))

        assert world.retries() == []
        assert [c.type for c in world.probe.commands()] == ["dunning.give_up"]
        assert [key for key, _, _ in world.probe.notices()] == [
            "notify:payment_method_required:1", "notify:1", "notify:3", "notify:7", "notify:final"]

    def test_hard_decline_code_is_recognised_even_when_the_event_does_not_flag_it(self, world: World) -> None:
        world.payment_failed(attempt_no=1, decline_code="lost_card", hard=False)
        world.run_until(world.day(8))
        assert world.retries() == []
        assert world.probe.notices()[0][1] == "payment_method_required"

    def test_payment_method_update_triggers_an_immediate_retry_that_succeeds(self, world: World) -> None:
        world.payment_failed(attempt_no=1)
        world.run_until(world.day(1.5))

        assert world.payment_method_updated() is Outcome.APPLIED

        [retry] = world.retries()
        assert retry.payload["reason"] == "payment_method_updated"
        assert retry.occurred_at == world.day(1.5)
        world.answer_retries(succeed=True)
        assert world.probe.case_status(world.invoice_id) == "recovered"
        world.run_until(world.day(15))
        assert len(world.probe.commands()) == 1
        assert [key for key, _, _ in world.probe.notices()] == ["notify:1"]

    def test_payment_method_update_after_a_hard_decline_resumes_retrying(self, world: World) -> None:
        world.payment_failed(attempt_no=1, decline_code="expired_card", hard=True)
        world.run_until(world.day(2))
        world.payment_method_updated()
        world.answer_retries(succeed=False)
        world.run_until(world.day(3))
        assert [(r.payload["reason"], r.occurred_at) for r in world.retries()] == [
            ("payment_method_updated", world.day(2)), ("scheduled", world.day(3))]

    # --- idempotency and restarts ---------------------------------------------------------------------------

    def test_the_same_event_delivered_twice_is_applied_once(self, world: World) -> None:
        failure = world.invoice_event("invoice.payment_failed", attempt_no=1, decline_code="stolen_card",
                                      hard_decline=True)
        assert world.publish("", {}, failure) is Outcome.APPLIED
        assert world.publish("", {}, failure) is Outcome.DUPLICATE
        assert len(world.probe.notices()) == 1

    def test_a_second_report_of_the_same_attempt_does_not_count_as_another_failure(self, world: World) -> None:
        world.payment_failed(attempt_no=1)
        assert world.payment_failed(attempt_no=1) is Outcome.IGNORED
        world.run_until(world.day(3))
        assert [r.payload["attempt_no"] for r in world.retries()] == [2]

    def test_a_restarted_service_neither_notifies_nor_retries_twice(self, world: World) -> None:
        world.payment_failed(attempt_no=1)
        world.run_until(world.day(3))
        before = (world.probe.commands(), world.probe.notices())

        for _ in range(3):
            world.restart()
            world.handlers.run_due()

        assert (world.probe.commands(), world.probe.notices()) == before
        assert len(before[0]) == 1
        assert len(before[1]) == 2

    def test_a_service_down_for_days_replays_the_missed_slots_in_order_each_retry_after_the_last_outcome(
            self, world: World) -> None:
        world.payment_failed(attempt_no=1)
        world.clock.set(world.day(6))
        world.handlers.run_due()
        assert [(c.payload["attempt_no"], c.occurred_at) for c in world.retries()] == [(2, world.day(3))]
        assert [key for key, _, _ in world.probe.notices()] == ["notify:1"]  # notify:3 waits for the retry
        world.answer_retries(succeed=False)
        assert [key for key, _, _ in world.probe.notices()] == ["notify:1", "notify:3"]
        assert [(c.payload["attempt_no"], c.occurred_at) for c in world.retries()] == [
            (2, world.day(3)), (3, world.day(5))]

    # --- closing a case -------------------------------------------------------------------------------------

    def test_invoice_paid_closes_an_open_case(self, world: World) -> None:
        world.payment_failed(attempt_no=1)
        world.run_until(world.day(2))
        assert world.invoice_paid() is Outcome.APPLIED
        assert world.probe.case_status(world.invoice_id) == "recovered"
        world.run_until(world.day(15))
        assert world.probe.commands() == []

    def test_invoice_paid_without_a_case_is_ignored(self, world: World) -> None:
        assert world.invoice_paid() is Outcome.IGNORED
        assert world.probe.case_status(world.invoice_id) is None

    def test_subscription_cancelled_elsewhere_stops_the_case_without_a_give_up(self, world: World) -> None:
        world.payment_failed(attempt_no=1)
        outcome = world.publish("subscription.status_changed", {
            "subscription_id": world.subscription_id, "customer_id": world.customer_id, "old_status": "past_due",
            "new_status": "cancelled", "plan_id": "pro"})
        assert outcome is Outcome.APPLIED
        world.run_until(world.day(15))
        assert world.probe.commands() == []
        assert world.probe.notices() == []
        assert world.probe.case_status(world.invoice_id) == "given_up"

    @pytest.mark.parametrize(("type_", "status"), [("invoice.voided", "void"),
                                                   ("invoice.uncollectible", "uncollectible")])
    def test_an_invoice_voided_or_marked_uncollectible_by_an_operator_stops_the_case(
            self, world: World, type_: str, status: str) -> None:
        # issue 14: POST /v1/invoices/{id}/void and /mark-uncollectible announce invoice.voided / .uncollectible
        world.payment_failed(attempt_no=1)
        world.run_until(world.day(2))
        assert world.publish("", {}, world.invoice_event(type_, status=status)) is Outcome.APPLIED
        assert world.probe.case_status(world.invoice_id) not in (None, "open")
        world.run_until(world.day(15))
        assert world.probe.commands() == []  # no retry on day 3, no give-up on day 14
        assert [key for key, _, _ in world.probe.notices()] == ["notify:1"]

    def test_failure_after_give_up_is_ignored(self, world: World) -> None:
        world.payment_failed(attempt_no=1)
        world.run_until(world.day(14))
        assert world.payment_failed(attempt_no=9) is Outcome.IGNORED

    # --- reconciliation gate --------------------------------------------------------------------------------

    def test_a_retry_waits_while_an_attempt_outcome_is_unknown_then_runs_once_settled(self, world: World) -> None:
        world.payment_failed(attempt_no=1)
        world.probe.set_unsettled_attempt(world.invoice_id, True)

        world.run_until(world.day(4))
        assert world.retries() == []
        # The unknown attempt may have paid: "payment failed" waits with the retry.
        assert [key for key, _, _ in world.probe.notices()] == ["notify:1"]

        world.probe.set_unsettled_attempt(world.invoice_id, False)
        world.clock.set(world.day(4) + timedelta(minutes=1))
        world.handlers.run_due()
        # Dated at its slot: the case stayed on day 3 until the retry could run.
        assert [(r.payload["attempt_no"], r.occurred_at) for r in world.retries()] == [(2, world.day(3))]

    def test_events_of_other_types_are_not_dunnings_business(self, world: World) -> None:
        outcome = world.publish("", {}, world.invoice_event("invoice.finalized"))
        assert outcome is Outcome.NOT_MINE


_ids = itertools.count(1)


def unique_ids() -> tuple[str, str, str]:
    n = next(_ids)
    return f"sub_{n}", f"cus_{n}", f"in_{n}"

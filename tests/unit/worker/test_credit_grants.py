"""Issue 15, item 3 (credits through the API) on the fake unit of work: grants as the edge sends them (parsed
from JSON, as the worker receives them), a grant replayed, and a void that writes off only what is left.

Pro includes USD 2.00 of `inference` credit a month.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from shared.contracts.messages import GrantCredits, VoidCreditGrant
from shared.domain.ledger import EntryKind
from shared.domain.money import Money
from tests.unit.worker.test_handlers import FEB_1, JAN_1, JAN_16, Worker


@pytest.fixture
def worker() -> Worker:
    return Worker()


def wire(payload: GrantCredits) -> GrantCredits:
    """The payload as the worker gets it from Kafka: every field written out, then parsed."""
    return type(payload).model_validate(payload.model_dump(mode="json"))


def grant(sub: str, grant_id: str, amount_minor: int, **extra: Any) -> GrantCredits:
    return wire(GrantCredits(subscription_id=sub, customer_id=f"cus_{sub}", grant_id=grant_id, meter_id="inference",
                             amount_minor=amount_minor, **extra))


def test_a_grant_without_a_priority_gets_its_sources_priority_after_the_wire(worker: Worker) -> None:
    # Before: the payload's default priority (100) was written out, so every grant from the wire ranked 100
    # (after paid top-ups at 50) instead of promotional 20.
    sub = worker.subscribe()
    worker.send(grant(sub, "cg_promo", 500, source="promotional"), JAN_1)
    worker.send(grant(sub, "cg_paid", 300, source="top_up"), JAN_1)
    worker.send(grant(sub, "cg_ranked", 100, source="promotional", priority=7), JAN_1)

    ledger = worker.store.ledgers[sub].ledger
    priorities = {g.grant_id.split("|")[1]: g.priority for g in ledger.grants("inference") if "|cg_" in g.grant_id}
    assert priorities == {"cg_promo": 20, "cg_paid": 50, "cg_ranked": 7}


def test_a_grant_sent_twice_is_applied_once_even_with_another_instant(worker: Worker) -> None:
    sub = worker.subscribe()
    first = worker.send(grant(sub, "cg_1", 500, effective_at=JAN_1), JAN_1)
    again = worker.send(grant(sub, "cg_1", 500, effective_at=JAN_16), JAN_16)

    assert worker.outcome(first) == ("applied", None) and worker.outcome(again) == ("applied", None)
    assert worker.result(again)["replayed"] is True
    ledger = worker.store.ledgers[sub].ledger
    assert ledger.remaining(f"{sub}|cg_1").amount_minor == 500  # type: ignore[union-attr]
    assert ledger.balance("inference", JAN_16).amount_minor == 200 + 500  # type: ignore[union-attr]


def test_voiding_writes_off_what_is_left_once_and_the_grant_is_never_drawn_again(worker: Worker) -> None:
    sub = worker.subscribe()
    worker.send(grant(sub, "cg_1", 500), JAN_1)
    ledger = worker.store.ledgers[sub].ledger
    ledger.consume("inference", Money(350, "USD"), JAN_16, reference="usage-1")  # as a close would draw
    # promotional (20) is drawn before the plan's included credit (30): all 350 from cg_1
    assert ledger.remaining(f"{sub}|cg_1").amount_minor == 150  # type: ignore[union-attr]

    voided = worker.send(VoidCreditGrant(subscription_id=sub, customer_id=f"cus_{sub}", grant_id=f"{sub}|cg_1",
                                         reason="typo"), JAN_16)
    twice = worker.send(VoidCreditGrant(subscription_id=sub, customer_id=f"cus_{sub}", grant_id=f"{sub}|cg_1"),
                        FEB_1)

    assert worker.result(voided)["written_off"] == 150  # the 350 consumed stays consumed
    assert (worker.result(twice)["written_off"], worker.result(twice)["replayed"]) == (150, True)
    ledger = worker.store.ledgers[sub].ledger
    voids = [e for e in ledger.entries if e.kind is EntryKind.VOID]
    assert [(e.grant_id, e.amount.amount_minor) for e in voids] == [(f"{sub}|cg_1", -150)]  # type: ignore[union-attr]
    after = ledger.consume("inference", Money(10, "USD"), datetime(2026, 1, 20, tzinfo=UTC), reference="usage-2")
    assert all(e.grant_id != f"{sub}|cg_1" for e in after.entries)


def test_voiding_an_unknown_grant_is_refused(worker: Worker) -> None:
    sub = worker.subscribe()
    envelope = worker.send(VoidCreditGrant(subscription_id=sub, customer_id=f"cus_{sub}", grant_id=f"{sub}|cg_x"),
                           JAN_1)
    assert worker.outcome(envelope) == ("rejected", "unknown_credit_grant")


"""The domain's payment-attempt statuses are the ones the table accepts, and the statements the adapter
renders from the domain's transition table say what the executor has always claimed and withdrawn."""

from __future__ import annotations

import pytest

from services.billing_worker.adapters import payment_attempts as store
from shared.adapters.postgres.schema.billing import ATTEMPT_STATUSES, payment_attempts
from shared.domain.payment_attempt import AttemptStatus

pytestmark = pytest.mark.unit


def test_the_domain_statuses_are_the_tables() -> None:
    assert {s.value for s in AttemptStatus} == set(ATTEMPT_STATUSES)


def test_a_claim_retakes_in_flight_and_unknown_attempts_and_waits_for_any_holder_of_the_invoice() -> None:
    head, claim = (" ".join(str(statement).split()) for statement in (store._HEAD, store._CLAIM))
    # the head it reads, and the row it locks (PostgreSQL re-checks it on the row's newest version)
    for text, alias in ((head, "a"), (claim, "a")):
        assert f"{alias}.status = 'pending' AND ({alias}.lease_until IS NULL OR {alias}.lease_until < now())" in text
        assert f"OR {alias}.status IN ('in_flight', 'unknown') AND {alias}.lease_until < now()" in text
    assert "AND b.status IN ('in_flight', 'succeeded', 'unknown')" in claim


def test_the_claims_queue_index_holds_every_status_a_claim_may_take() -> None:
    queue = next(i for i in payment_attempts.indexes if i.name == "ix_payment_attempts_queue")
    where = str(queue.dialect_options["postgresql"]["where"].compile(compile_kwargs={"literal_binds": True}))
    assert {s.value for s in AttemptStatus if f"'{s.value}'" in where} == {s.value for s in store.QUEUED}
    assert " ".join(str(store._HEAD).split()).startswith(
        "SELECT a.attempt_id FROM payment_attempts a WHERE a.status IN ('in_flight', 'pending', 'unknown')")


def test_only_pending_attempts_of_paid_or_void_invoices_are_withdrawn() -> None:
    withdraw = " ".join(str(store._WITHDRAW_OF_CLOSED_INVOICES).split())
    assert "(a.status IN ('pending')) IS TRUE AND i.status IN ('paid', 'void')" in withdraw

"""The domain's payment-attempt statuses are the ones the table accepts, and the statements the adapter
renders from the domain's transition table say what the executor has always claimed and withdrawn."""

from __future__ import annotations

import pytest

from services.billing_worker.adapters import payment_attempts as store
from shared.adapters.postgres.schema.billing import ATTEMPT_STATUSES
from shared.domain.payment_attempt import AttemptStatus

pytestmark = pytest.mark.unit


def test_the_domain_statuses_are_the_tables() -> None:
    assert {s.value for s in AttemptStatus} == set(ATTEMPT_STATUSES)


def test_a_claim_retakes_in_flight_and_unknown_attempts_and_waits_for_any_holder_of_the_invoice() -> None:
    claim = " ".join(str(store._CLAIM).split())
    assert "a.status = 'pending' AND (a.lease_until IS NULL OR a.lease_until < now())" in claim
    assert "OR a.status IN ('in_flight', 'unknown') AND a.lease_until < now()" in claim
    assert "AND b.status IN ('in_flight', 'succeeded', 'unknown')" in claim


def test_only_pending_attempts_of_paid_or_void_invoices_are_withdrawn() -> None:
    withdraw = " ".join(str(store._WITHDRAW_OF_CLOSED_INVOICES).split())
    assert "a.status IN ('pending') AND i.status IN ('paid', 'void')" in withdraw

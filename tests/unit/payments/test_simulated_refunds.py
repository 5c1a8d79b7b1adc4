"""The simulated provider's refunds behave like a provider's: a succeeded payment, never more than it took,
one refund per idempotency key."""

from __future__ import annotations

import pytest

from shared.adapters.payments.port import RefundRequest, RefundStatus
from shared.adapters.payments.simulated import SimulatedGateway
from shared.domain.money import Money
from tests.unit.payments.gateway_contract import request_for

pytestmark = pytest.mark.unit


def refund(ref: str | None, minor: int, key: str) -> RefundRequest:
    return RefundRequest(credit_note_id="cn_1", invoice_id="in_1", amount=Money(minor, "USD"), payment_ref=ref,
                         idempotency_key=key)


def test_a_refund_gives_back_at_most_what_the_payment_took_and_a_repeated_key_is_the_same_refund() -> None:
    gateway = SimulatedGateway()
    paid = gateway.charge(request_for("pm_card_visa", amount_minor=3_000))
    first = gateway.refund(refund(paid.provider_ref, 2_000, "rf_1"))
    again = gateway.refund(refund(paid.provider_ref, 2_000, "rf_1"))
    too_much = gateway.refund(refund(paid.provider_ref, 1_001, "rf_2"))
    rest = gateway.refund(refund(paid.provider_ref, 1_000, "rf_3"))
    assert first.status is RefundStatus.SUCCEEDED and again.provider_ref == first.provider_ref
    assert (too_much.status, too_much.code) == (RefundStatus.FAILED, "amount_too_large")
    assert rest.status is RefundStatus.SUCCEEDED
    assert sum(r.amount_minor for r in gateway.record.refunds_of(paid.provider_ref or "")) == 3_000


def test_nothing_paid_nothing_refunded() -> None:
    gateway = SimulatedGateway()
    declined = gateway.charge(request_for("pm_card_chargeDeclined"))
    assert gateway.refund(refund(declined.provider_ref, 100, "rf_1")).status is RefundStatus.FAILED
    assert gateway.refund(refund(None, 100, "rf_2")).code == "charge_not_found"

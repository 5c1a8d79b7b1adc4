"""How the Stripe adapter reads Stripe's answers to a refund (scripted HTTP transport, Stripe's documented
shapes): refused -> failed with Stripe's code, timeout or 5xx -> unknown (sent again with the same key),
`failed` refund object -> failed with its failure_reason."""

from __future__ import annotations

import stripe

from shared.adapters.payments.port import RefundRequest, RefundStatus
from shared.domain.money import Money
from tests.unit.payments.test_stripe_gateway_mapping import gateway_answering

REQUEST = RefundRequest(credit_note_id="cn_1", invoice_id="in_1", amount=Money(500, "USD"), payment_ref="pi_1",
                        idempotency_key="refund:cn_1")


def refund(status: str, **extra: object) -> tuple[int, dict[str, object]]:
    return 200, {"id": "re_1", "object": "refund", "status": status, "amount": 500, "currency": "usd",
                 "payment_intent": "pi_1", **extra}


def test_a_succeeded_or_pending_refund_is_taken() -> None:
    assert gateway_answering(refund("succeeded")).refund(REQUEST).status is RefundStatus.SUCCEEDED
    assert gateway_answering(refund("pending")).refund(REQUEST).provider_ref == "re_1"


def test_a_refused_refund_is_failed_with_stripes_code() -> None:
    refused = (400, {"error": {"type": "invalid_request_error", "code": "charge_already_refunded",
                               "message": "Charge ch_1 has already been refunded."}})
    outcome = gateway_answering(refused).refund(REQUEST)
    assert (outcome.status, outcome.code) == (RefundStatus.FAILED, "charge_already_refunded")


def test_a_lost_answer_or_a_server_error_is_unknown() -> None:
    lost = stripe.APIConnectionError("timed out")
    server_error = (500, {"error": {"type": "api_error", "message": "Something went wrong"}})
    assert gateway_answering(lost, lost).refund(REQUEST).status is RefundStatus.UNKNOWN
    assert gateway_answering(server_error, server_error).refund(REQUEST).status is RefundStatus.UNKNOWN


def test_a_failed_refund_object_is_failed_with_its_reason() -> None:
    outcome = gateway_answering(refund("failed", failure_reason="lost_or_stolen_card")).refund(REQUEST)
    assert (outcome.status, outcome.code) == (RefundStatus.FAILED, "lost_or_stolen_card")

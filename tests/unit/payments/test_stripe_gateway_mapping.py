"""How the Stripe adapter reads Stripe's answers, with Stripe's SDK over a scripted HTTP transport.

stripe-mock answers every request with a canned object, so the outcomes that matter (declines with their
codes, timeouts, 5xx) are exercised here against responses in Stripe's documented shapes.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import stripe

from shared.adapters.payments.port import ChargeStatus, PaymentGatewayError
from shared.adapters.payments.stripe_gateway import StripeGateway, make_stripe_client
from tests.unit.payments.gateway_contract import request_for

Answer = Callable[[str, str, str], tuple[int, dict[str, object]]]


class ScriptedStripeTransport(stripe.HTTPClient):
    """Answers each request with the next scripted (status, JSON body), or raises a connection error."""

    name = "scripted"

    def __init__(self, answers: list[tuple[int, dict[str, object]] | Exception]) -> None:
        super().__init__()
        self._answers = list(answers)
        self.requests: list[tuple[str, str]] = []

    def request(self, method, url, headers, post_data=None):  # type: ignore[no-untyped-def]
        self.requests.append((method, url))
        answer = self._answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        status, body = answer
        return json.dumps(body), status, {"Request-Id": "req_test"}

    def close(self) -> None:
        pass


def intent(status: str, *, pi_id: str = "pi_123", error: dict[str, object] | None = None) -> dict[str, object]:
    return {"id": pi_id, "object": "payment_intent", "status": status, "amount": 2000, "currency": "usd",
            "metadata": {}, "last_payment_error": error, "created": 1}


def card_error(decline_code: str, pi_id: str = "pi_123") -> tuple[int, dict[str, object]]:
    return 402, {"error": {"type": "card_error", "code": "card_declined", "decline_code": decline_code,
                           "message": "Your card was declined.", "payment_intent": intent(
                               "requires_payment_method", pi_id=pi_id)}}


def gateway_answering(*answers: tuple[int, dict[str, object]] | Exception) -> StripeGateway:
    return StripeGateway(make_stripe_client("sk_test_x", "http://stripe.invalid",
                                            http_client=ScriptedStripeTransport(list(answers))))


def test_a_payment_intent_confirmed_to_succeeded_is_a_success_with_its_amount() -> None:
    outcome = gateway_answering((200, intent("requires_confirmation")), (200, intent("succeeded"))).charge(
        request_for())
    assert (outcome.status, outcome.provider_ref, outcome.amount_minor, outcome.currency) == (
        ChargeStatus.SUCCEEDED, "pi_123", 2000, "USD")


def test_an_insufficient_funds_card_error_is_a_soft_decline_naming_the_payment_intent() -> None:
    outcome = gateway_answering((200, intent("requires_confirmation")),
                                card_error("insufficient_funds")).charge(request_for())
    assert (outcome.status, outcome.decline_code, outcome.hard_decline, outcome.provider_ref) == (
        ChargeStatus.DECLINED, "insufficient_funds", False, "pi_123")


def test_a_stolen_card_error_is_a_hard_decline() -> None:
    outcome = gateway_answering((200, intent("requires_confirmation")), card_error("stolen_card")).charge(
        request_for())
    assert (outcome.status, outcome.decline_code, outcome.hard_decline) == (
        ChargeStatus.DECLINED, "stolen_card", True)


def test_a_connection_error_during_confirmation_is_unknown_and_keeps_the_payment_intent() -> None:
    lost = stripe.APIConnectionError("timed out")
    outcome = gateway_answering((200, intent("requires_confirmation")), lost, lost).charge(request_for())
    assert (outcome.status, outcome.provider_ref) == (ChargeStatus.UNKNOWN, "pi_123")


def test_a_stripe_server_error_is_unknown_not_a_decline() -> None:
    server_error = (500, {"error": {"type": "api_error", "message": "Something went wrong"}})
    outcome = gateway_answering((200, intent("requires_confirmation")), server_error, server_error).charge(
        request_for())
    assert outcome.status is ChargeStatus.UNKNOWN


def test_a_later_attempt_confirms_the_existing_payment_intent_without_creating_another() -> None:
    transport = ScriptedStripeTransport([(200, intent("succeeded", pi_id="pi_first"))])
    gateway = StripeGateway(make_stripe_client("sk_test_x", "http://stripe.invalid", http_client=transport))
    outcome = gateway.charge(request_for(provider_ref="pi_first"))
    assert outcome.provider_ref == "pi_first"
    assert [url.rsplit("/v1/", 1)[1] for _, url in transport.requests] == ["payment_intents/pi_first/confirm"]


def test_bad_credentials_raise_a_retryable_gateway_error_instead_of_an_outcome() -> None:
    refused = (401, {"error": {"type": "invalid_request_error", "message": "Invalid API Key provided"}})
    with pytest.raises(PaymentGatewayError):
        gateway_answering(refused).charge(request_for())


def test_lookup_reads_a_succeeded_payment_intent_as_succeeded() -> None:
    found = gateway_answering((200, intent("succeeded"))).lookup(
        idempotency_key="pa_1", invoice_id="in_1", provider_ref="pi_123")
    assert found is not None and found.status is ChargeStatus.SUCCEEDED


def test_lookup_of_a_payment_intent_still_processing_stays_unknown() -> None:
    found = gateway_answering((200, intent("processing"))).lookup(
        idempotency_key="pa_1", invoice_id="in_1", provider_ref="pi_123")
    assert found is not None and found.status is ChargeStatus.UNKNOWN


def test_lookup_of_a_payment_intent_never_confirmed_finds_no_charge() -> None:
    assert gateway_answering((200, intent("requires_payment_method"))).lookup(
        idempotency_key="pa_1", invoice_id="in_1", provider_ref="pi_123") is None


def test_lookup_by_invoice_ignores_payment_intents_of_other_invoices() -> None:
    other = {**intent("succeeded", pi_id="pi_other"), "metadata": {"invoice_id": "in_other"}}
    mine = {**intent("succeeded", pi_id="pi_mine"), "metadata": {"invoice_id": "in_1"}}
    page = {"object": "search_result", "data": [other, mine], "has_more": False, "url": "/v1/payment_intents/search"}
    found = gateway_answering((200, page)).lookup(idempotency_key="pa_1", invoice_id="in_1")
    assert found is not None and found.provider_ref == "pi_mine"

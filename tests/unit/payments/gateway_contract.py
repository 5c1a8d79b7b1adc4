"""The PaymentGateway contract, written once and run against every backend (subclass per backend).

`PaymentGatewayContract` holds what any provider must honour, including Stripe as emulated by stripe-mock
(which answers with canned objects: it tells us ids, not outcomes). `ScriptedGatewayContract` adds what a
scriptable backend must honour on top (outcomes per Stripe test payment method, idempotent replay,
reconciliation after a lost answer). A backend test module subclasses one of them and provides the
`gateway` fixture.
"""

from __future__ import annotations

import uuid

import pytest

from shared.adapters.payments.port import ChargeOutcome, ChargeRequest, ChargeStatus, PaymentGateway
from shared.domain.money import Money


def request_for(payment_method_id: str = "pm_card_visa", *, amount_minor: int = 2_000,
                invoice_id: str | None = None, key: str | None = None, customer_id: str = "cus_contract",
                provider_ref: str | None = None) -> ChargeRequest:
    return ChargeRequest(invoice_id=invoice_id or f"in_{uuid.uuid4().hex[:12]}",
                         amount=Money(amount_minor, "USD"), customer_id=customer_id,
                         payment_method_id=payment_method_id, idempotency_key=key or f"pa_{uuid.uuid4().hex}",
                         provider_ref=provider_ref)


class PaymentGatewayContract:
    @pytest.fixture
    def gateway(self) -> PaymentGateway:
        raise NotImplementedError("a backend test class provides the gateway fixture")

    def test_a_charge_names_the_payment_intent_it_used(self, gateway: PaymentGateway) -> None:
        outcome = gateway.charge(request_for())
        assert outcome.provider_ref is not None
        assert outcome.provider_ref.startswith("pi_")

    def test_a_later_attempt_on_the_same_invoice_confirms_the_same_payment_intent(
            self, gateway: PaymentGateway) -> None:
        first = gateway.charge(request_for())
        assert first.provider_ref is not None
        second = gateway.charge(request_for(provider_ref=first.provider_ref))
        assert second.provider_ref == first.provider_ref

    def test_looking_up_a_payment_intent_reports_that_payment_intent(self, gateway: PaymentGateway) -> None:
        request = request_for()
        outcome = gateway.charge(request)
        found = gateway.lookup(idempotency_key=request.idempotency_key, invoice_id=request.invoice_id,
                               provider_ref=outcome.provider_ref)
        assert found is not None
        assert found.provider_ref == outcome.provider_ref
        assert found.status in (ChargeStatus.SUCCEEDED, ChargeStatus.DECLINED, ChargeStatus.UNKNOWN)

    def test_looking_up_a_charge_that_was_never_sent_finds_nothing(self, gateway: PaymentGateway) -> None:
        assert gateway.lookup(idempotency_key=f"pa_{uuid.uuid4().hex}",
                              invoice_id=f"in_never_{uuid.uuid4().hex[:8]}") is None

    def test_a_charge_request_without_a_positive_amount_cannot_be_built(self) -> None:
        with pytest.raises(ValueError, match="positive amount"):
            request_for(amount_minor=0)


class ScriptedGatewayContract(PaymentGatewayContract):
    def test_a_visa_test_card_is_charged_the_amount_requested(self, gateway: PaymentGateway) -> None:
        outcome = gateway.charge(request_for("pm_card_visa", amount_minor=1_234))
        assert outcome.status is ChargeStatus.SUCCEEDED
        assert (outcome.amount_minor, outcome.currency) == (1_234, "USD")

    def test_repeating_an_idempotency_key_replays_the_first_answer(self, gateway: PaymentGateway) -> None:
        request = request_for("pm_card_visa")
        assert gateway.charge(request) == gateway.charge(request)

    @pytest.mark.parametrize(("method", "code"), [
        ("pm_card_chargeDeclined", "generic_decline"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
        ("pm_card_chargeDeclinedProcessingError", "processing_error"),
    ])
    def test_a_soft_decline_carries_its_code_and_may_be_retried(self, gateway: PaymentGateway, method: str,
                                                                 code: str) -> None:
        outcome = gateway.charge(request_for(method))
        assert (outcome.status, outcome.decline_code, outcome.hard_decline) == (
            ChargeStatus.DECLINED, code, False)

    @pytest.mark.parametrize(("method", "code"), [
        ("pm_card_chargeDeclinedStolenCard", "stolen_card"),
        ("pm_card_chargeDeclinedLostCard", "lost_card"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card"),
        ("pm_card_chargeDeclinedFraudulent", "fraudulent"),
    ])
    def test_a_hard_decline_says_the_card_can_never_succeed(self, gateway: PaymentGateway, method: str,
                                                            code: str) -> None:
        outcome = gateway.charge(request_for(method))
        assert (outcome.status, outcome.decline_code, outcome.hard_decline) == (
            ChargeStatus.DECLINED, code, True)

    def test_a_timeout_after_the_provider_charged_is_unknown_and_reconciles_to_succeeded(
            self, gateway: PaymentGateway) -> None:
        request = request_for("pm_sim_timeout_after_success")
        outcome = gateway.charge(request)
        assert outcome.status is ChargeStatus.UNKNOWN
        found = gateway.lookup(idempotency_key=request.idempotency_key, invoice_id=request.invoice_id,
                               provider_ref=outcome.provider_ref)
        assert found is not None and found.status is ChargeStatus.SUCCEEDED
        assert found.amount_minor == request.amount.amount_minor

    def test_a_server_error_is_unknown_and_the_lookup_finds_no_charge(self, gateway: PaymentGateway) -> None:
        request = request_for("pm_sim_server_error")
        assert gateway.charge(request).status is ChargeStatus.UNKNOWN
        assert gateway.lookup(idempotency_key=request.idempotency_key, invoice_id=request.invoice_id) is None

    def test_decline_then_succeed_declines_the_first_attempt_of_an_invoice_only(
            self, gateway: PaymentGateway) -> None:
        invoice_id = f"in_{uuid.uuid4().hex[:10]}"
        first = gateway.charge(request_for("pm_sim_decline_then_succeed", invoice_id=invoice_id))
        second = gateway.charge(request_for("pm_sim_decline_then_succeed", invoice_id=invoice_id,
                                            provider_ref=first.provider_ref))
        assert (first.status, first.decline_code) == (ChargeStatus.DECLINED, "insufficient_funds")
        assert second.status is ChargeStatus.SUCCEEDED

    def test_a_customer_script_wins_over_the_payment_method(self, gateway: PaymentGateway) -> None:
        customer = f"cus_{uuid.uuid4().hex[:8]}"
        gateway.script_customer(customer, "pm_card_chargeDeclinedStolenCard")  # type: ignore[attr-defined]
        scripted = gateway.charge(request_for("pm_card_visa", customer_id=customer))
        gateway.script_customer(customer, None)  # type: ignore[attr-defined]
        unscripted = gateway.charge(request_for("pm_card_visa", customer_id=customer))
        assert (scripted.status, scripted.decline_code) == (ChargeStatus.DECLINED, "stolen_card")
        assert unscripted.status is ChargeStatus.SUCCEEDED

    def test_outcomes_are_the_same_for_the_same_script_every_time(self, gateway: PaymentGateway) -> None:
        def shape(o: ChargeOutcome) -> tuple[object, ...]:
            return (o.status, o.decline_code, o.hard_decline, o.amount_minor)
        runs = [[shape(gateway.charge(request_for(m))) for m in ("pm_card_visa", "pm_card_chargeDeclined")]
                for _ in range(3)]
        assert runs[0] == runs[1] == runs[2]

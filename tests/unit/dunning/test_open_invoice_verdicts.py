"""What the provider's answer about an open invoice's PaymentIntent means, and the simulated provider's model
of a payment made out of band (paid at the provider, no webhook): the two halves of the open-invoice pass
that need no database."""

from __future__ import annotations

import uuid

import pytest

from services.dunning.reconciliation import InvoiceVerdict, OpenInvoice, judge_provider_answer
from shared.adapters.payments.port import ChargeOutcome, ChargeRequest, ChargeStatus
from shared.adapters.payments.simulated import InMemoryProviderRecord, SimulatedGateway, intent_ref
from shared.domain.money import Money

pytestmark = pytest.mark.unit

INVOICE = OpenInvoice(invoice_id="in_1", subscription_id="sub_1", customer_id="cus_1", due_minor=2000,
                      currency="USD", provider_ref="pi_1")


def paid(amount_minor: int = 2000, currency: str = "usd", *, invoice_id: str | None = "in_1",
         ref: str = "pi_1") -> ChargeOutcome:
    return ChargeOutcome.succeeded(ref, Money(amount_minor, currency.upper()), invoice_id=invoice_id)


def test_a_payment_intent_that_succeeded_for_the_amount_due_marks_the_invoice_paid() -> None:
    verdict, _ = judge_provider_answer(INVOICE, paid())
    assert verdict is InvoiceVerdict.PAID


@pytest.mark.parametrize(("outcome", "why"), [
    (paid(invoice_id="in_other"), "belongs to invoice 'in_other'"),
    (paid(invoice_id=None), "belongs to invoice None"),
    (paid(ref="pi_other"), "not for 'pi_1'"),
    (paid(1999), "paid 1999 USD, due 2000 USD"),
    (paid(currency="eur"), "paid 2000 EUR, due 2000 USD"),
    (ChargeOutcome(ChargeStatus.SUCCEEDED, "pi_1", invoice_id="in_1"), "did not say how much"),
])
def test_a_success_that_is_not_provably_this_invoices_payment_is_refused_as_a_mismatch(
        outcome: ChargeOutcome, why: str) -> None:
    verdict, reason = judge_provider_answer(INVOICE, outcome)
    assert verdict is InvoiceVerdict.MISMATCH
    assert why in reason


def test_a_search_by_invoice_id_is_trusted_only_through_the_invoice_id_it_carries() -> None:
    never_charged_by_ref = OpenInvoice(invoice_id="in_1", subscription_id="sub_1", customer_id="cus_1",
                                       due_minor=2000, currency="USD", provider_ref=None, in_dunning=True)
    assert judge_provider_answer(never_charged_by_ref, paid(ref="pi_found"))[0] is InvoiceVerdict.PAID
    assert judge_provider_answer(never_charged_by_ref, paid(invoice_id="in_2"))[0] is InvoiceVerdict.MISMATCH


@pytest.mark.parametrize(("outcome", "verdict"), [
    (None, InvoiceVerdict.NO_RECORD),
    (ChargeOutcome.declined("insufficient_funds", hard=False, provider_ref="pi_1"), InvoiceVerdict.DECLINED),
    (ChargeOutcome.unknown("payment intent processing", "pi_1"), InvoiceVerdict.UNKNOWN),
])
def test_anything_but_a_success_leaves_the_invoice_to_the_dunning_schedule(
        outcome: ChargeOutcome | None, verdict: InvoiceVerdict) -> None:
    assert judge_provider_answer(INVOICE, outcome)[0] is verdict


def declined_invoice(gateway: SimulatedGateway) -> tuple[str, ChargeOutcome]:
    invoice_id = f"in_{uuid.uuid4().hex[:10]}"
    declined = gateway.charge(ChargeRequest(invoice_id=invoice_id, amount=Money(2000, "USD"), customer_id="cus_1",
                                            payment_method_id="pm_card_chargeDeclinedInsufficientFunds",
                                            idempotency_key=f"pa_{invoice_id}_1"))
    assert declined.status is ChargeStatus.DECLINED
    return invoice_id, declined


def test_a_payment_made_out_of_band_is_seen_by_a_lookup_of_the_payment_intent_but_not_by_the_attempts_key(
) -> None:
    gateway = SimulatedGateway(InMemoryProviderRecord())
    invoice_id, declined = declined_invoice(gateway)
    assert declined.provider_ref == intent_ref(invoice_id)

    gateway.pay_out_of_band(intent_ref(invoice_id))

    by_intent = gateway.lookup(invoice_id=invoice_id, provider_ref=declined.provider_ref)
    by_invoice = gateway.lookup(invoice_id=invoice_id)
    by_attempt = gateway.lookup(idempotency_key=f"pa_{invoice_id}_1", invoice_id=invoice_id)
    assert by_intent == by_invoice
    assert by_intent is not None
    assert (by_intent.status, by_intent.invoice_id, by_intent.amount_minor, by_intent.currency) == (
        ChargeStatus.SUCCEEDED, invoice_id, 2000, "USD")
    assert by_attempt is not None and by_attempt.status is ChargeStatus.DECLINED  # that attempt did decline


def test_a_payment_intent_paid_out_of_band_cannot_be_paid_or_charged_again() -> None:
    gateway = SimulatedGateway(InMemoryProviderRecord())
    invoice_id, declined = declined_invoice(gateway)
    gateway.pay_out_of_band(intent_ref(invoice_id))

    retry = gateway.charge(ChargeRequest(invoice_id=invoice_id, amount=Money(2000, "USD"), customer_id="cus_1",
                                         payment_method_id="pm_card_visa", idempotency_key=f"pa_{invoice_id}_2",
                                         provider_ref=declined.provider_ref))

    assert (retry.status, retry.decline_code, retry.hard_decline) == (
        ChargeStatus.DECLINED, "payment_intent_unexpected_state", True)
    with pytest.raises(ValueError, match="already succeeded"):
        gateway.pay_out_of_band(intent_ref(invoice_id))
    with pytest.raises(ValueError, match="no such payment intent"):
        gateway.pay_out_of_band("pi_sim_never_created")
    record = gateway.record
    assert isinstance(record, InMemoryProviderRecord)
    assert [c.succeeded for c in record.charges() if c.invoice_id == invoice_id] == [False, True]

"""`refund` against real backends: Stripe's adapter against stripe-mock (what it sends), the simulated
provider with its books in PostgreSQL."""

from __future__ import annotations

from urllib.parse import parse_qs

import pytest

from shared.adapters.payments.port import RefundRequest, RefundStatus
from shared.adapters.payments.simulated import PostgresProviderRecord, SimulatedGateway
from shared.adapters.payments.stripe_gateway import StripeGateway, make_stripe_client
from shared.domain.money import Money
from tests.integration.payments.test_gateway_contract_backends import RecordingHttpClient
from tests.unit.payments.gateway_contract import request_for

pytestmark = pytest.mark.integration


def test_stripe_refunds_the_invoices_payment_intent_for_the_amount_with_a_key_from_the_credit_note(
        stripe_api_base: str) -> None:
    http = RecordingHttpClient()
    gateway = StripeGateway(make_stripe_client("sk_test_123", stripe_api_base, http_client=http))
    outcome = gateway.refund(RefundRequest(credit_note_id="cn_42", invoice_id="in_42", amount=Money(1_234, "USD"),
                                           payment_ref="pi_123", idempotency_key="rf_cn_42"))
    (method, url, headers, body), = http.sent
    sent = parse_qs(body)
    assert (method, url.endswith("/v1/refunds")) == ("post", True)
    assert (sent["payment_intent"], sent["amount"], sent["metadata[credit_note_id]"]) == (
        ["pi_123"], ["1234"], ["cn_42"])
    assert headers["Idempotency-Key"] == "rf_cn_42:refund"
    assert outcome.status is RefundStatus.SUCCEEDED and (outcome.provider_ref or "").startswith("re_")


def test_stripe_without_a_payment_to_refund_fails_without_calling() -> None:
    gateway = StripeGateway(make_stripe_client("sk_test_123", "http://127.0.0.1:1"))
    outcome = gateway.refund(RefundRequest(credit_note_id="cn_1", invoice_id="in_1", amount=Money(1, "USD"),
                                           payment_ref=None, idempotency_key="rf_1"))
    assert (outcome.status, outcome.code) == (RefundStatus.FAILED, "charge_not_found")


def test_the_simulated_providers_refunds_are_kept_in_its_postgres_books(engine) -> None:  # type: ignore[no-untyped-def]
    paid = SimulatedGateway(PostgresProviderRecord(engine)).charge(request_for("pm_card_visa", amount_minor=500))
    request = RefundRequest(credit_note_id="cn_1", invoice_id="in_1", amount=Money(500, "USD"),
                            payment_ref=paid.provider_ref, idempotency_key="rf_pg_1")
    first = SimulatedGateway(PostgresProviderRecord(engine)).refund(request)
    replay = SimulatedGateway(PostgresProviderRecord(engine)).refund(request)  # another process, same key
    more = SimulatedGateway(PostgresProviderRecord(engine)).refund(
        RefundRequest(credit_note_id="cn_2", invoice_id="in_1", amount=Money(1, "USD"),
                      payment_ref=paid.provider_ref, idempotency_key="rf_pg_2"))
    assert first.status is RefundStatus.SUCCEEDED and replay.provider_ref == first.provider_ref
    assert more.status is RefundStatus.FAILED

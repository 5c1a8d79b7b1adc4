"""The PaymentGateway contract against real backends: Stripe's adapter against stripe-mock, and the
simulated provider with its record in PostgreSQL (the record the crash tests rely on)."""

from __future__ import annotations

from urllib.parse import parse_qs

import pytest
import stripe

from shared.adapters.payments.port import ChargeStatus
from shared.adapters.payments.simulated import PostgresProviderRecord, SimulatedGateway
from shared.adapters.payments.stripe_gateway import StripeGateway, make_stripe_client
from tests.unit.payments.gateway_contract import (
    PaymentGatewayContract,
    ScriptedGatewayContract,
    request_for,
)

pytestmark = pytest.mark.integration


class TestStripeGatewayAgainstStripeMock(PaymentGatewayContract):
    @pytest.fixture
    def gateway(self, stripe_api_base: str) -> StripeGateway:
        return StripeGateway(make_stripe_client("sk_test_123", stripe_api_base, timeout_s=10))


class TestSimulatedGatewayWithPostgresRecord(ScriptedGatewayContract):
    @pytest.fixture
    def gateway(self, engine) -> SimulatedGateway:  # type: ignore[no-untyped-def]
        return SimulatedGateway(PostgresProviderRecord(engine))


def test_the_simulated_providers_record_outlives_the_gateway_object(engine) -> None:  # type: ignore[no-untyped-def]
    request = request_for("pm_sim_timeout_after_success")
    lost = SimulatedGateway(PostgresProviderRecord(engine)).charge(request)
    # A new process (new gateway object) reconciles from the provider's record.
    found = SimulatedGateway(PostgresProviderRecord(engine)).lookup(
        idempotency_key=request.idempotency_key, invoice_id=request.invoice_id)
    assert lost.status is ChargeStatus.UNKNOWN
    assert found is not None and found.status is ChargeStatus.SUCCEEDED


class RecordingHttpClient(stripe.HTTPXClient):
    """The real HTTP client, keeping what was sent so a test can read the requests stripe-mock accepted."""

    def __init__(self) -> None:
        super().__init__(timeout=10, allow_sync_methods=True)
        self.sent: list[tuple[str, str, dict[str, str], str]] = []

    def request(self, method, url, headers, post_data=None):  # type: ignore[no-untyped-def]
        self.sent.append((method, url, dict(headers or {}), post_data or ""))
        return super().request(method, url, headers, post_data)


def test_the_adapter_creates_then_confirms_one_payment_intent_off_session_with_keys_from_the_attempt(
        stripe_api_base: str) -> None:
    http = RecordingHttpClient()
    gateway = StripeGateway(make_stripe_client("sk_test_123", stripe_api_base, http_client=http))
    request = request_for("pm_card_visa", amount_minor=4_321, key="pa_attempt_42")
    gateway.charge(request)
    (create_method, create_url, create_headers, create_body), (_, confirm_url, confirm_headers,
                                                               confirm_body) = http.sent
    create = parse_qs(create_body)
    confirm = parse_qs(confirm_body)
    assert (create_method, create_url.endswith("/v1/payment_intents")) == ("post", True)
    assert (create["amount"], create["currency"], create["metadata[invoice_id]"]) == (
        ["4321"], ["usd"], [request.invoice_id])
    assert create_headers["Idempotency-Key"] == "pa_attempt_42:create"
    assert confirm_url.endswith("/confirm")
    assert (confirm["off_session"], confirm["payment_method"]) == (["true"], ["pm_card_visa"])
    assert confirm_headers["Idempotency-Key"] == "pa_attempt_42:confirm"

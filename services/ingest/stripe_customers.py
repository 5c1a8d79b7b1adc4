"""The payment provider's customers over Stripe's SDK: the `PaymentCustomers` port of onboarding
(`services.ingest.service_layer.customers`), with Stripe's errors translated into ours."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import stripe

from services.ingest.service_layer.refusals import PaymentProviderRefused
from services.ingest.service_layer.unit_of_work import CustomerRecord
from shared.errors import InfrastructureError

_T = TypeVar("_T")


def _stripe_call(call: Callable[[], _T]) -> _T:
    """Run a Stripe call; its errors become ours (a refusal `PaymentProviderRefused`, an outage retryable)."""
    try:
        return call()
    except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
        raise InfrastructureError(f"stripe unavailable: {type(exc).__name__}") from exc
    except stripe.StripeError as exc:
        if exc.http_status is not None and exc.http_status >= 500:
            raise InfrastructureError(f"stripe error {exc.http_status}") from exc
        raise PaymentProviderRefused(exc.user_message or "request refused", getattr(exc, "code", None)) from exc


class StripeCustomers:
    """`PaymentCustomers` over the Stripe SDK's client."""

    def __init__(self, client: stripe.StripeClient) -> None:
        self._client = client

    def create_customer(self, customer: CustomerRecord, *, idempotency_key: str) -> str:
        created = _stripe_call(lambda: self._client.v1.customers.create(
            params={"email": customer.email, "name": customer.name,
                    "metadata": {"customer_id": customer.customer_id, "external_id": customer.external_id}},
            options={"idempotency_key": idempotency_key}))
        return str(created.id)

    def attach_payment_method(self, payment_method_id: str, provider_customer_id: str, *,
                              idempotency_key: str) -> None:
        _stripe_call(lambda: self._client.v1.payment_methods.attach(
            payment_method_id, params={"customer": provider_customer_id},
            options={"idempotency_key": idempotency_key}))

"""Payment providers behind one port: Stripe (PaymentIntents) and a scriptable simulated provider."""

from __future__ import annotations

import sqlalchemy as sa

from shared.adapters.payments.port import (
    ChargeOutcome,
    ChargeRequest,
    ChargeStatus,
    PaymentGateway,
    PaymentGatewayError,
)
from shared.config import Settings

__all__ = ["ChargeOutcome", "ChargeRequest", "ChargeStatus", "PaymentGateway", "PaymentGatewayError",
           "make_gateway"]


def make_gateway(settings: Settings, engine: sa.Engine | None = None) -> PaymentGateway:
    """The gateway the settings ask for. The simulated one keeps its record in PostgreSQL when an engine
    is given (it then outlives the process, like a real provider), else in memory."""
    if settings.payment_gateway == "stripe":
        from shared.adapters.payments.stripe_gateway import StripeGateway, make_stripe_client

        return StripeGateway(make_stripe_client(settings.stripe_api_key.get_secret_value(),
                                                settings.stripe_api_base))
    from shared.adapters.payments.simulated import (
        InMemoryProviderRecord,
        PostgresProviderRecord,
        SimulatedGateway,
    )

    return SimulatedGateway(PostgresProviderRecord(engine) if engine is not None else InMemoryProviderRecord())

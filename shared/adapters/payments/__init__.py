"""Payment providers behind one port: Stripe (PaymentIntents) and a scriptable simulated provider.

Which one a process uses is chosen by its composition root with `shared.bootstrap.build_gateway`."""

from __future__ import annotations

from shared.adapters.payments.port import (
    ChargeOutcome,
    ChargeRequest,
    ChargeStatus,
    PaymentGateway,
    PaymentGatewayError,
)

__all__ = ["ChargeOutcome", "ChargeRequest", "ChargeStatus", "PaymentGateway", "PaymentGatewayError"]

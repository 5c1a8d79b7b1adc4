"""Payment providers behind one port: Stripe (PaymentIntents) and a scriptable simulated provider."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.adapters.payments.port import (
    ChargeOutcome,
    ChargeRequest,
    ChargeStatus,
    PaymentGateway,
    PaymentGatewayError,
)
from shared.config import Settings

if TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = ["ChargeOutcome", "ChargeRequest", "ChargeStatus", "PaymentGateway", "PaymentGatewayError",
           "make_gateway"]


def make_gateway(settings: Settings, engine: sa.Engine | None = None) -> PaymentGateway:
    """Kept for callers not yet moved: the one gateway factory is `shared.bootstrap.build_gateway`."""
    from shared.bootstrap import build_gateway  # composition imports the adapters, not the other way round

    return build_gateway(settings, engine)

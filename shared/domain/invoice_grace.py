"""How long a period-close invoice stays DRAFT after its period ends (issue 14, item 2).

During the grace, usage of the closed period that arrives late is billed on that invoice as usage of its
period (``rating.rate_grace_usage``); when it ends the invoice is finalised (numbered, charged). Metronome
defaults to 24 h, Lago to 0; ours is the issuer's setting (``BILLING_INVOICE_GRACE_SECONDS``, default 0:
finalised at the close), which a customer's own setting overrides.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from shared.domain.calendar import ensure_utc
from shared.domain.errors import InvalidValueError

MAX_GRACE_SECONDS = 90 * 86_400


def invoice_grace_seconds(customer_seconds: int | None, issuer_seconds: int) -> int:
    """The grace of a customer's invoices: their own setting when they have one (0 included: finalised at
    the close), else the issuer's default."""
    grace = issuer_seconds if customer_seconds is None else customer_seconds
    if isinstance(grace, bool) or not isinstance(grace, int) or not 0 <= grace <= MAX_GRACE_SECONDS:
        raise InvalidValueError(f"an invoice grace is 0..{MAX_GRACE_SECONDS} seconds, got {grace!r}")
    return grace


def finalizes_at(period_end: datetime, grace_seconds: int | None) -> datetime | None:
    """When the draft of the period ending at ``period_end`` is finalised; None when there is no grace (the
    invoice is finalised at its close and never is a draft)."""
    if not grace_seconds:
        return None
    return ensure_utc(period_end) + timedelta(seconds=grace_seconds)

"""Prepaid credit purchases and auto-recharge (issue 15, item 3): the rules, free of storage.

Contract:
- A purchase buys ``amount`` of money credit on one meter for ``price`` (by default the amount), both in the
  subscription's currency. It is charged as a MANUAL invoice ("Prepaid credits"); the credit is granted
  (source ``top_up``, the paid-credit priority) WHEN THAT INVOICE IS PAID, once: ``grant_into`` on a purchase
  already granted writes nothing. A purchase whose invoice is voided or written off is ``cancelled``; money
  still received for it afterwards (an uncollectible invoice paid late) grants it all the same.
- A purchase without an expiry expires ``DEFAULT_TERM`` after it is paid.
- Auto-recharge (Metronome's prepaid balance threshold, Lago's recurring top-up): when the credit left on the
  meter is below ``threshold``, buy ``target - remaining``. At most one recharge is pending per subscription and
  meter (the adapter's unique index); the next crossing can only start once it is paid or cancelled.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Final

from shared.domain.calendar import ensure_utc
from shared.domain.errors import InvalidValueError
from shared.domain.ledger import CreditLedger, GrantSource, LedgerEntry
from shared.domain.money import Money, UnitPrice, line_amount

# NOTE: a top-up granted without an expiry expires at its month's end (shared/domain/ledger.py): right for a
# monthly allowance, wrong for credit the customer paid for. Paid credit lasts a year unless told otherwise.
DEFAULT_TERM: Final = timedelta(days=365)
PRODUCT_LINE: Final = "Prepaid credits"


class PurchaseStatus(StrEnum):
    PENDING = "pending"
    GRANTED = "granted"
    CANCELLED = "cancelled"


class PurchaseOrigin(StrEnum):
    MANUAL = "manual"
    AUTO_RECHARGE = "auto_recharge"


@dataclass(slots=True)
class CreditPurchase:
    """One purchase of prepaid credit, from its invoice to its grant."""

    purchase_id: str
    subscription_id: str
    customer_id: str
    meter_id: str
    amount: Money
    price: Money
    invoice_id: str
    created_at: datetime
    expires_at: datetime | None = None
    origin: PurchaseOrigin = PurchaseOrigin.MANUAL
    status: PurchaseStatus = PurchaseStatus.PENDING
    grant_id: str | None = None
    settled_at: datetime | None = None

    def __post_init__(self) -> None:
        if not self.amount.is_positive():
            raise InvalidValueError(f"a purchase buys a positive amount of credit, got {self.amount}")
        if not self.price.is_positive():
            raise InvalidValueError(f"a purchase costs something, got {self.price}")
        if self.price.currency != self.amount.currency:
            raise InvalidValueError("a purchase is priced in the currency of the credit it buys")
        self.created_at = ensure_utc(self.created_at, "created_at")

    @property
    def ledger_grant_id(self) -> str:
        """The grant's id in the subscription's ledger (`<subscription>|<purchase>`, like API grants)."""
        return f"{self.subscription_id}|{self.purchase_id}"

    def grant_into(self, ledger: CreditLedger, paid_at: datetime) -> LedgerEntry | None:
        """Grant the credit bought (the invoice was paid at ``paid_at``); None when it was granted before."""
        if self.status is PurchaseStatus.GRANTED:
            return None
        paid_at = ensure_utc(paid_at, "paid_at")
        expires_at = self.expires_at if self.expires_at is not None else paid_at + DEFAULT_TERM
        entry = ledger.grant(grant_id=self.ledger_grant_id, meter=self.meter_id, amount=self.amount,
                             source=GrantSource.TOP_UP, effective_at=paid_at,
                             expires_at=max(expires_at, paid_at + timedelta(seconds=1)))
        self.status, self.grant_id, self.settled_at = PurchaseStatus.GRANTED, self.ledger_grant_id, paid_at
        return entry

    def cancel(self, at: datetime) -> bool:
        """The invoice will not be paid (voided, written off): grant nothing. False when not pending."""
        if self.status is not PurchaseStatus.PENDING:
            return False
        self.status, self.settled_at = PurchaseStatus.CANCELLED, ensure_utc(at, "at")
        return True


@dataclass(frozen=True, slots=True)
class AutoRecharge:
    """Keep a meter's money credit at or above ``threshold`` by buying up to ``target``."""

    meter_id: str
    threshold: Money
    target: Money
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.threshold.currency != self.target.currency:
            raise InvalidValueError("threshold and target are in one currency")
        if self.threshold.is_negative():
            raise InvalidValueError("a threshold is not negative")
        if not self.target.amount_minor > self.threshold.amount_minor:
            raise InvalidValueError("the target must be above the threshold")

    def due(self, remaining: Money) -> Money | None:
        """What to buy now that ``remaining`` is left (``target - remaining``), or None above the threshold."""
        if not self.enabled or remaining.amount_minor >= self.threshold.amount_minor:
            return None
        return self.target - remaining


def remaining_in_period(balance: Money, unbilled_quantity: Decimal, unit_price: UnitPrice | None) -> Money:
    """Credit left on a money meter as the period goes: what its grants hold now less what the period's unbilled
    usage will draw at the close, priced per unit and rounded once (the spend gate's rule; credits are only
    consumed when the period is rated at its close).

    # NOTE: a meter priced by a model (tiers, packages) has no unit price to spend ahead of rating: its
    # remaining is what the grants hold, so its recharge is detected when the close consumes them.
    """
    if unit_price is None or unbilled_quantity <= 0:
        return balance
    return balance - line_amount(unbilled_quantity, unit_price)

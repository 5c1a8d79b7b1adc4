"""The records the billing unit of work talks in (service_layer/unit_of_work.py is the port,
adapters/sql_unit_of_work.py and tests/unit/worker/fakes.py implement it): an aggregate with what the
worker stores beside it, and the catalog's credit kinds (`shared.domain.catalog.credit_kinds`, re-exported).

# NOTE: outside the layers on purpose (like dunning's ports.py): the service layer and the adapters that
# implement its port both import it, and it imports only the domain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from shared.domain.catalog import credit_kinds as credit_kinds  # the catalog's rule, re-exported
from shared.domain.invoice import Invoice
from shared.domain.ledger import CreditLedger
from shared.domain.subscription import Subscription

DEFAULT_ISSUER = "default"


@dataclass
class SubscriptionState:
    """The subscription aggregate plus the billing snapshot the worker keeps beside it (currency, time zone,
    tax rate) and the version it was stored at."""

    subscription: Subscription
    currency: str
    timezone: str
    tax_rate_bps: int
    stored_version: int | None = None  # None: not stored yet

    @property
    def id(self) -> str:
        return self.subscription.id


@dataclass
class LedgerState:
    ledger: CreditLedger
    stored_entries: int
    stored_grants: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class InvoiceToStore:
    invoice: Invoice
    plan_id: str | None
    payment_method_id: str | None
    issuer: str = DEFAULT_ISSUER
    finalizes_at: datetime | None = None  # a draft: when its grace ends

"""The PaymentGateway port: charge a saved payment method for one invoice, and look a charge up.

Contract (DESIGN.md rules 3 and 4):
- The caller writes a payment-attempt row *before* calling `charge`, and passes an idempotency key derived
  from that attempt. A gateway must treat a repeated key as the same request: it never moves money twice
  for one key, and answers with the first outcome.
- `charge` does not raise for business outcomes: it returns SUCCEEDED, DECLINED (with the provider's
  decline code and whether it is hard) or UNKNOWN (timeout, connection error, provider 5xx: the request may
  or may not have taken effect). It raises `PaymentGatewayError` only when the request certainly did not
  reach the provider in a usable form (misconfiguration), which is retryable later.
- An UNKNOWN outcome is reconciled with `lookup` before any retry; `lookup` returns None when the provider
  has no record of a charge for that key (then, and only then, the same request may be sent again).
- `refund` gives money back on a payment (a credit note's refunded part), idempotent per key like `charge`:
  the caller writes its refund row first; an UNKNOWN outcome is sent again with the same key.
- `lookup` without a key answers what the provider knows about the invoice's PaymentIntent now (by
  `provider_ref`, else by a search on the invoice id), whoever moved it: the open-invoice reconciliation
  uses it to find payments made out of band (a lost webhook, Stripe's own retry, the hosted page).
- Any call may raise `ProviderRateLimited` (a `PaymentGatewayError`: nothing was done, send it again later);
  `rate_limit.RateLimitedGateway` paces the calls and retries those answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar, Protocol

from shared.domain.money import Money
from shared.domain.payment_attempt import INTENT_NOT_CONFIRMABLE as INTENT_NOT_CONFIRMABLE  # re-exported
from shared.errors import InfrastructureError


class ChargeStatus(StrEnum):
    SUCCEEDED = "succeeded"
    DECLINED = "declined"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ChargeRequest:
    """One charge of one invoice with the customer's saved payment method (off-session).

    `provider_ref` is the provider object of an earlier attempt on the same invoice (Stripe: the
    PaymentIntent), so every attempt of an invoice confirms the same PaymentIntent.
    """

    invoice_id: str
    amount: Money
    customer_id: str
    payment_method_id: str
    idempotency_key: str
    provider_customer_id: str | None = None
    provider_ref: str | None = None
    description: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.amount.is_positive():
            raise ValueError(f"a charge needs a positive amount, got {self.amount}")
        if not self.idempotency_key:
            raise ValueError("a charge needs an idempotency key")


@dataclass(frozen=True, slots=True)
class ChargeOutcome:
    status: ChargeStatus
    provider_ref: str | None = None
    decline_code: str | None = None
    hard_decline: bool = False
    message: str | None = None
    amount_minor: int | None = None
    currency: str | None = None
    invoice_id: str | None = None
    """The invoice the provider object was created for (Stripe: the PaymentIntent's metadata), when known."""

    @classmethod
    def succeeded(cls, provider_ref: str, amount: Money | None = None, *,
                  invoice_id: str | None = None) -> ChargeOutcome:
        return cls(ChargeStatus.SUCCEEDED, provider_ref, amount_minor=amount.amount_minor if amount else None,
                   currency=amount.currency if amount else None, invoice_id=invoice_id)

    @classmethod
    def declined(cls, code: str, *, hard: bool, provider_ref: str | None = None,
                 message: str | None = None) -> ChargeOutcome:
        return cls(ChargeStatus.DECLINED, provider_ref, decline_code=code, hard_decline=hard, message=message)

    @classmethod
    def unknown(cls, message: str, provider_ref: str | None = None) -> ChargeOutcome:
        return cls(ChargeStatus.UNKNOWN, provider_ref, message=message[:500])

    @property
    def is_final(self) -> bool:
        return self.status is not ChargeStatus.UNKNOWN

    def mismatch_for(self, *, invoice_id: str, provider_ref: str | None, due_minor: int, currency: str) -> str | None:
        """Why this success is not provably the payment of `due_minor` `currency` on `invoice_id` (under
        `provider_ref`, when we know which PaymentIntent we charged), or None when it is.

        The one rule for a success we did not see happen (a lookup after the fact): the provider object names
        the invoice, is ours, and took exactly what is due in the invoice's currency."""
        if self.status is not ChargeStatus.SUCCEEDED:
            return f"not a success ({self.status.value})"
        if self.invoice_id != invoice_id:
            return f"the payment intent belongs to invoice {self.invoice_id!r}"
        if provider_ref is not None and self.provider_ref != provider_ref:
            return f"the provider answered for {self.provider_ref!r}, not for {provider_ref!r}"
        if self.amount_minor is None or self.currency is None:
            return "the provider did not say how much was paid"
        if self.currency.upper() != currency.upper() or self.amount_minor != due_minor:
            return f"paid {self.amount_minor} {self.currency.upper()}, due {due_minor} {currency.upper()}"
        return None


class PaymentGatewayError(InfrastructureError):
    """The gateway could not be used at all (bad credentials, misconfiguration); nothing was charged."""

    retryable: ClassVar[bool] = True


class ProviderRateLimited(PaymentGatewayError):
    """The provider refused the request for its rate limit (HTTP 429, Stripe's `rate_limit`): it did nothing,
    so the same request (same idempotency key) may be sent again after `retry_after_s` (the provider's
    Retry-After, when it gave one). Never a decline: the card was not asked."""

    def __init__(self, message: str, *, retry_after_s: float | None = None, should_retry: bool = True) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.should_retry = should_retry
        """False when the provider said not to send it again now (Stripe-Should-Retry: false)."""


class PaymentGateway(Protocol):
    name: str

    def charge(self, request: ChargeRequest) -> ChargeOutcome:
        """Charge `request.amount` off-session; idempotent per `request.idempotency_key`."""
        ...

    def lookup(self, *, idempotency_key: str | None = None, invoice_id: str,
               provider_ref: str | None = None) -> ChargeOutcome | None:
        """What the provider knows about the charge sent with this key for this invoice (or about this
        provider object); None when it has no record of a charge. Without a key: the current state of the
        invoice's provider object (by `provider_ref`, else found by the invoice id), which the caller must
        check against the invoice (`ChargeOutcome.invoice_id`, amount, currency) before trusting it."""
        ...

    def refund(self, request: RefundRequest) -> RefundOutcome:
        """Give `request.amount` back on the payment `request.payment_ref`; idempotent per key (a repeated key
        is the same refund); never raises for a business outcome (PaymentGatewayError only when the provider
        cannot be used at all: nothing was refunded)."""
        ...


# ------------------------------------------------------------------------------------------------ refunds


class RefundStatus(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class RefundRequest:
    """Give `amount` back on the payment `payment_ref` (Stripe: the invoice's PaymentIntent).

    Idempotent per `idempotency_key` (derived from the credit note): a repeated key is the same refund, never
    a second one. The caller writes its refund row before calling, like a charge's attempt."""

    credit_note_id: str
    invoice_id: str
    amount: Money
    payment_ref: str | None
    idempotency_key: str
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.amount.is_positive():
            raise ValueError(f"a refund needs a positive amount, got {self.amount}")
        if not self.idempotency_key:
            raise ValueError("a refund needs an idempotency key")


@dataclass(frozen=True, slots=True)
class RefundOutcome:
    """SUCCEEDED (the provider took the refund), FAILED (refused: nothing was given back; `code` says why) or
    UNKNOWN (timeout, 5xx: it may have happened; the same request with the same key is safe to send again)."""

    status: RefundStatus
    provider_ref: str | None = None
    code: str | None = None
    message: str | None = None


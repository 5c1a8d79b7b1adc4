"""Payment attempts: one charge of one invoice, the moves its status may make, and what a decline means.

Contract (DESIGN.md rules 3 and 4):
- An attempt is written PENDING *before* any provider call; the provider's idempotency key derives from it.
- An executor claims it (IN_FLIGHT, under a lease, one more dispatch counted), calls the provider, and
  records the answer on its own claim: SUCCEEDED, DECLINED, or UNKNOWN when the answer was lost (timeout,
  connection error, provider 5xx). A gateway that could not be used at all (misconfiguration: nothing
  reached the provider) releases the claim back to PENDING without counting the dispatch.
- UNKNOWN is never charged blind: it is claimed again later, and that claim looks the charge up before
  sending anything. An IN_FLIGHT attempt whose lease expired (its executor died mid-call) is claimed again
  the same way.
- Outcomes reported by someone else (a webhook, the reconciliation job) settle an attempt that is not
  settled yet, whoever holds it; a reported success also replaces a decline (the invoice's PaymentIntent
  was paid later, e.g. on the provider's hosted page).
- A PENDING attempt is withdrawn (CANCELLED) when its invoice no longer needs it (paid, voided, dunning
  gave up). An IN_FLIGHT attempt is cancelled only when it charged an invoice that another attempt had
  already paid: a refund case, which the caller makes loud.
- SUCCEEDED and CANCELLED are final. At most one attempt of an invoice succeeds: a rule across attempts
  that the adapter keeps (a unique index, and a guard in the reported-success statement).

Each move is a ``Transition`` with the statuses it may start from (``TRANSITIONS``). The aggregate refuses
any other start with ``AttemptTransitionError``; the adapter's compare-and-set statements (one attempt or
many at once) take their status conditions from the same table, so the SQL and the model cannot disagree.
Leases are the adapter's business: they are measured on the database's clock, not the billing clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from shared.domain.calendar import ensure_utc
from shared.domain.errors import InvalidTransitionError, InvalidValueError
from shared.domain.money import Money


class AttemptStatus(StrEnum):
    PENDING = "pending"
    """Written, not sent yet (or released: the gateway could not be used)."""
    IN_FLIGHT = "in_flight"
    """Claimed by an executor, which is calling the provider (or died doing so: its lease then expires)."""
    SUCCEEDED = "succeeded"
    DECLINED = "declined"
    UNKNOWN = "unknown"
    """The provider's answer was lost: looked up before anything is sent again."""
    CANCELLED = "cancelled"


class Transition(StrEnum):
    CLAIM = "claim"
    RELEASE = "release"
    LOSE_ANSWER = "lose_answer"
    SUCCEED = "succeed"
    DECLINE = "decline"
    ACCEPT_REPORTED_SUCCESS = "accept_reported_success"
    ACCEPT_REPORTED_FAILURE = "accept_reported_failure"
    WITHDRAW = "withdraw"
    CANCEL_DUPLICATE_CHARGE = "cancel_duplicate_charge"


@dataclass(frozen=True, slots=True)
class Move:
    sources: frozenset[AttemptStatus]
    target: AttemptStatus


_S = AttemptStatus

# Not settled yet: no answer of the provider is recorded. A dunning retry of the invoice waits for these.
UNSETTLED: Final[frozenset[AttemptStatus]] = frozenset({_S.PENDING, _S.IN_FLIGHT, _S.UNKNOWN})
FINAL: Final[frozenset[AttemptStatus]] = frozenset({_S.SUCCEEDED, _S.CANCELLED})
# NOTE: an attempt in one of these keeps every other attempt of its invoice from being claimed: one charge of
# an invoice at the provider at a time, and none once one succeeded.
HOLDS_ITS_INVOICE: Final[frozenset[AttemptStatus]] = frozenset({_S.IN_FLIGHT, _S.UNKNOWN, _S.SUCCEEDED})

TRANSITIONS: Final[Mapping[Transition, Move]] = MappingProxyType({
    # NOTE: IN_FLIGHT and UNKNOWN are claimed again only once their lease expired (the adapter checks it);
    # such a claim looks the charge up first.
    Transition.CLAIM: Move(UNSETTLED, _S.IN_FLIGHT),
    Transition.RELEASE: Move(frozenset({_S.IN_FLIGHT}), _S.PENDING),
    Transition.LOSE_ANSWER: Move(frozenset({_S.IN_FLIGHT}), _S.UNKNOWN),
    Transition.SUCCEED: Move(frozenset({_S.IN_FLIGHT}), _S.SUCCEEDED),
    Transition.DECLINE: Move(frozenset({_S.IN_FLIGHT}), _S.DECLINED),
    # NOTE: a success learned afterwards wins over a decline: the provider took the money.
    Transition.ACCEPT_REPORTED_SUCCESS: Move(UNSETTLED | {_S.DECLINED}, _S.SUCCEEDED),
    Transition.ACCEPT_REPORTED_FAILURE: Move(UNSETTLED, _S.DECLINED),
    Transition.WITHDRAW: Move(frozenset({_S.PENDING}), _S.CANCELLED),
    Transition.CANCEL_DUPLICATE_CHARGE: Move(frozenset({_S.IN_FLIGHT}), _S.CANCELLED),
})


def sources_of(transition: Transition) -> frozenset[AttemptStatus]:
    """The statuses `transition` may start from (the compare-and-set condition of its statement)."""
    return TRANSITIONS[transition].sources


class AttemptTransitionError(InvalidTransitionError):
    """A payment attempt was asked for a move its status does not allow."""

    def __init__(self, attempt_id: str, current: AttemptStatus, transition: Transition) -> None:
        super().__init__(f"payment attempt {attempt_id} ({transition.value})", current.value,
                         TRANSITIONS[transition].target.value)
        self.attempt_id = attempt_id
        self.transition = transition


@dataclass(slots=True)
class PaymentAttempt:
    """One charge of one invoice. Identity and the charge (``amount``, ``idempotency_key``) never change;
    the status moves only through the methods below, each of which names its ``Transition``
    (``last_transition``, for the adapter that stores it)."""

    attempt_id: str
    invoice_id: str
    attempt_no: int
    subscription_id: str
    customer_id: str
    amount: Money
    payment_method_id: str | None
    idempotency_key: str
    requested_at: datetime
    reason: str = "initial"
    status: AttemptStatus = AttemptStatus.PENDING
    dispatch_count: int = 0
    provider_ref: str | None = None
    decline_code: str | None = None
    hard_decline: bool = False
    error_message: str | None = None
    completed_at: datetime | None = None
    last_transition: Transition | None = None

    def __post_init__(self) -> None:
        if self.attempt_no < 1:
            raise InvalidValueError(f"attempt numbers start at 1, got {self.attempt_no}")
        if not self.amount.is_positive():
            raise InvalidValueError(f"a payment attempt needs a positive amount, got {self.amount}")
        if not self.idempotency_key:
            raise InvalidValueError("a payment attempt needs an idempotency key")
        self.requested_at = ensure_utc(self.requested_at, "requested_at")

    @classmethod
    def request(cls, *, attempt_id: str, invoice_id: str, attempt_no: int, subscription_id: str,
                customer_id: str, amount: Money, payment_method_id: str | None, requested_at: datetime,
                reason: str = "initial") -> PaymentAttempt:
        """A new PENDING attempt, decided at `requested_at`. Its idempotency key is its id: a provider that
        sees the key again answers with the first outcome instead of charging twice."""
        return cls(attempt_id=attempt_id, invoice_id=invoice_id, attempt_no=attempt_no,
                   subscription_id=subscription_id, customer_id=customer_id, amount=amount,
                   payment_method_id=payment_method_id, idempotency_key=attempt_id,
                   requested_at=requested_at, reason=reason)

    @property
    def is_settled(self) -> bool:
        return self.status not in UNSETTLED

    @property
    def needs_lookup(self) -> bool:
        """Whether the provider may already have this charge: it was sent at least once before the claim
        being made now, so the next step is a lookup, never a blind charge."""
        return self.dispatch_count > 1

    # --- moves ---------------------------------------------------------------------------------------

    def _move(self, transition: Transition) -> None:
        move = TRANSITIONS[transition]
        if self.status not in move.sources:
            raise AttemptTransitionError(self.attempt_id, self.status, transition)
        self.status = move.target
        self.last_transition = transition

    def claim(self) -> None:
        """An executor takes the attempt to charge it; one more dispatch is counted."""
        self._move(Transition.CLAIM)
        self.dispatch_count += 1

    def release(self, error: str | None) -> None:
        """The gateway could not be used (nothing reached the provider): back to PENDING, and the
        dispatch just counted is given back."""
        self._move(Transition.RELEASE)
        self.dispatch_count -= 1
        self.error_message = error

    def lose_answer(self, message: str | None, provider_ref: str | None = None) -> None:
        """The provider may or may not have acted (timeout, connection error, 5xx): UNKNOWN until looked up."""
        self._move(Transition.LOSE_ANSWER)
        self.error_message = message
        self.provider_ref = provider_ref or self.provider_ref

    def succeed(self, *, at: datetime, provider_ref: str | None, message: str | None = None) -> None:
        """The claimant's charge succeeded."""
        self._settle(Transition.SUCCEED, at, provider_ref, None, False)
        self.error_message = message

    def decline(self, *, at: datetime, code: str | None, hard: bool, provider_ref: str | None,
                message: str | None = None) -> None:
        """The claimant's charge was refused; `hard` when this payment method can never succeed."""
        self._settle(Transition.DECLINE, at, provider_ref, code, hard)
        self.error_message = message

    def accept_reported_success(self, *, at: datetime, provider_ref: str | None) -> None:
        """Someone else (webhook, reconciliation) learned that the charge succeeded."""
        self._settle(Transition.ACCEPT_REPORTED_SUCCESS, at, provider_ref, None, False)

    def accept_reported_failure(self, *, at: datetime, provider_ref: str | None, code: str | None,
                                hard: bool) -> None:
        """Someone else (webhook, reconciliation) learned that the charge failed, or never happened."""
        self._settle(Transition.ACCEPT_REPORTED_FAILURE, at, provider_ref, code, hard)

    def withdraw(self, *, at: datetime) -> None:
        """The invoice no longer needs this charge (paid, voided, given up) and it was not sent."""
        self._move(Transition.WITHDRAW)
        self.completed_at = ensure_utc(at)

    def cancel_duplicate_charge(self, *, at: datetime) -> None:
        """The provider charged although another attempt of the invoice had already succeeded."""
        self._move(Transition.CANCEL_DUPLICATE_CHARGE)
        self.completed_at = ensure_utc(at)
        self.error_message = "charged although another attempt had succeeded: refund required"

    def forget_payment_method(self) -> None:
        """The customer's payment method is gone: an attempt not sent yet must not use it."""
        if self.status is not AttemptStatus.PENDING:
            raise InvalidValueError(
                f"payment attempt {self.attempt_id} is {self.status.value}: its payment method was already used")
        self.payment_method_id = None

    def _settle(self, transition: Transition, at: datetime, provider_ref: str | None, code: str | None,
                hard: bool) -> None:
        instant = ensure_utc(at)
        self._move(transition)
        self.provider_ref = provider_ref or self.provider_ref
        self.decline_code = code
        self.hard_decline = hard
        self.completed_at = instant


# ------------------------------------------------------------------------------------------- declines

# The provider refuses to confirm a PaymentIntent that is no longer confirmable (Stripe: it already
# succeeded, was cancelled, or is processing); what that means for the invoice takes a lookup.
INTENT_NOT_CONFIRMABLE: Final = "payment_intent_unexpected_state"

# Stripe decline codes (``decline_code`` on a card error) that mean the card itself can no longer be
# charged: retrying the same card cannot succeed and card networks penalise retries of such declines.
# Stripe has no ``account_closed`` code: a closed account is reported as ``invalid_account``.
# Soft declines such as ``insufficient_funds``, ``do_not_honor``, ``generic_decline``,
# ``try_again_later`` or ``processing_error`` are retried on the dunning schedule.
CARD_HARD_DECLINE_CODES: Final[frozenset[str]] = frozenset(
    {
        "stolen_card",
        "lost_card",
        "pickup_card",
        "fraudulent",
        "merchant_blacklist",
        "restricted_card",
        "invalid_account",
        "expired_card",
        "incorrect_number",
        "card_not_supported",
        "currency_not_supported",
        "do_not_try_again",
        "revocation_of_authorization",
        "revocation_of_all_authorizations",
        "stop_payment_order",
        "security_violation",
        "new_account_information_available",
    }
)

# Error codes (Stripe's ``error.code``, not ``decline_code``) that also mean the same request cannot succeed.
HARD_ERROR_CODES: Final[frozenset[str]] = frozenset(
    {"expired_card", "incorrect_number", "invalid_number", "resource_missing", "payment_method_unactivated",
     INTENT_NOT_CONFIRMABLE})

HARD_DECLINE_CODES: Final[frozenset[str]] = CARD_HARD_DECLINE_CODES | HARD_ERROR_CODES


def is_hard_decline(code: str | None, hard_codes: frozenset[str] = HARD_DECLINE_CODES) -> bool:
    """True when the provider's decline (or error) code says this payment method cannot be charged again:
    dunning asks for another one at once instead of retrying on its schedule. The one classification,
    used by the gateways, the webhook translation and dunning."""
    return code is not None and code in hard_codes

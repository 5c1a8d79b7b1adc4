"""The domain's errors, with a family per concept, under the project's root (``shared.errors``).

Every domain error is terminal (a ``TerminalError``: ``retryable`` is False): retrying the same input gives
the same answer. Adapters translate driver errors into their own families; callers may catch ``DomainError``
to map any rule violation to a rejected command or a dead-lettered message, with the machine-readable code
``shared.errors.refusal_code`` gives it (``InvalidTransitionError`` -> ``invalid_transition``).
"""

from __future__ import annotations

from typing import ClassVar

from shared.errors import TerminalError


class DomainError(TerminalError):
    """Root of every error raised by ``shared.domain``.

    ``code`` names the refusal for machines (stored in a rejected command's outcome, returned by the edge):
    a class attribute, or given where the rule is broken (``SubscriptionError(..., code="already_on_plan")``);
    without one, ``refusal_code`` derives it from the class name.
    """

    retryable: ClassVar[bool] = False

    def __init__(self, *args: object, code: str | None = None) -> None:
        super().__init__(*args)
        if code is not None:
            self.code = code


class InvalidValueError(DomainError, ValueError):
    """A value object was built from an input that breaks its invariants."""


# --- money -----------------------------------------------------------------------------------------


class MoneyError(DomainError):
    """Family: money arithmetic and currencies."""


class UnknownCurrencyError(MoneyError, InvalidValueError):
    """The currency code is not in the ISO 4217 table we support."""


class CurrencyMismatchError(MoneyError):
    """Two amounts in different currencies were combined or compared."""

    def __init__(self, left: str, right: str) -> None:
        super().__init__(f"cannot combine amounts in {left} and {right}")
        self.left = left
        self.right = right


# --- calendar --------------------------------------------------------------------------------------


class CalendarError(DomainError):
    """Family: billing anchors, periods and instants."""


class NaiveDatetimeError(CalendarError, InvalidValueError):
    """A datetime without tzinfo was given where an aware instant is required."""


# --- catalog ---------------------------------------------------------------------------------------


class CatalogError(DomainError):
    """Family: the plan catalog is malformed or a plan/meter/coupon is unknown."""


class UnknownPlanError(CatalogError, KeyError):
    """No plan with this id exists in the catalog."""


# --- lifecycle (state machines) ------------------------------------------------------------------------


class LifecycleError(DomainError):
    """Family: an aggregate was asked to do something its current state forbids."""


class InvalidTransitionError(LifecycleError):
    """A state machine was asked for a transition it does not allow."""

    def __init__(self, aggregate: str, current: str, requested: str) -> None:
        super().__init__(f"{aggregate} cannot move from {current} to {requested}")
        self.aggregate = aggregate
        self.current = current
        self.requested = requested


class SubscriptionError(LifecycleError):
    """A subscription operation is not valid in the subscription's current situation."""


class InvoiceError(LifecycleError):
    """An invoice operation is not valid (e.g. editing a finalised invoice)."""


# --- coupons ---------------------------------------------------------------------------------------


class CouponError(DomainError):
    """Family: a coupon cannot be redeemed or applied."""


class CouponNotRedeemableError(CouponError):
    """The coupon is expired, exhausted, or does not apply to this plan."""


# --- proration / rating ----------------------------------------------------------------------------


class ProrationError(DomainError):
    """Family: a proration was requested for an instant or change that cannot be prorated."""


class RatingError(DomainError):
    """Family: a period close received inconsistent inputs (e.g. usage in a meter the plan lacks)."""

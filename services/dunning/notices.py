"""The words of dunning notifications (subject and plain-text body per notification kind)."""

from __future__ import annotations

from shared.domain.dunning import NotificationKind
from shared.domain.money import Money


def compose_notice(kind: NotificationKind, *, invoice_id: str, amount: Money, day: int,
                   give_up_after_days: int) -> tuple[str, str]:
    """Subject and body for one notice; ``day`` is the schedule day it belongs to."""
    due = amount.format()
    if kind is NotificationKind.PAYMENT_FAILED:
        days_left = give_up_after_days - day
        return (
            f"Payment of {due} failed",
            f"We could not collect {due} for invoice {invoice_id}. We will try again automatically; "
            f"please check your payment method. Without payment your subscription will be cancelled "
            f"in {days_left} day{'s' if days_left != 1 else ''}.",
        )
    if kind is NotificationKind.PAYMENT_METHOD_REQUIRED:
        return (
            f"Action required: update your payment method for {due}",
            f"Your bank declined the payment of {due} for invoice {invoice_id} and the card cannot be "
            f"charged again. Please add a new payment method; we will retry as soon as you do.",
        )
    return (
        "Your subscription has been cancelled",
        f"We were unable to collect {due} for invoice {invoice_id} within {give_up_after_days} days, "
        f"so your subscription has been cancelled. Contact us to reactivate it.",
    )

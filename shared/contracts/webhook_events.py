"""The public event catalog of outgoing webhooks, and the ONE table from internal billing events to it.

Receivers see these names (`type` of the delivered body); the internal `billing-events.v1` types stay an
internal contract. `public_event` is the whole translation: an internal event that maps to no public name
is not delivered (payment-method changes, for instance).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

# Every public name, with what it means. Names marked "not produced yet" are accepted in an endpoint's
# subscription (so a receiver can subscribe ahead) but no service emits them today.
CATALOG: Final[Mapping[str, str]] = {
    "invoice.drafted": "a period-close invoice was stored as a draft during its grace",
    "invoice.finalized": "an invoice was numbered and is owed (or settled at once by the balance)",
    "invoice.paid": "an invoice was paid in full",
    "invoice.payment_failed": "a payment attempt of an invoice failed",
    "invoice.voided": "an invoice was voided",
    "invoice.uncollectible": "an invoice was written off (manually or when dunning gave up)",
    "credit_note.created": "a credit note was issued against an invoice (reduced / refunded / credited parts)",
    "subscription.created": "a subscription started (trialing or active)",
    "subscription.updated": "a subscription changed status (paused, resumed, past due, trial ended, ...)",
    "subscription.cancelled": "a subscription was cancelled",
    "credits.granted": "credits were granted to a subscription",
    "credits.expired": "credits expired unused",
    "credits.balance_low": "a meter's credit left fell below its alert threshold (once per period and threshold)",
    "alert.triggered": "the period's usage spend reached an alert threshold (once per period and threshold)",
    "quota.threshold_reached": "an org used a configured share of its report quota",
    "quota.limit_reached": "an org (or one of its users) reached its report limit",
    "quota.on_track_to_limit": "an org is on track to reach its monthly report limit",
}
ALL_EVENTS: Final = "*"
NOT_PRODUCED_YET: Final[frozenset[str]] = frozenset()


def _subscription_status(payload: Mapping[str, Any]) -> str:
    if payload.get("old_status") is None:
        return "subscription.created"
    if payload.get("new_status") == "cancelled":
        return "subscription.cancelled"
    return "subscription.updated"


def _same(name: str) -> Callable[[Mapping[str, Any]], str]:
    return lambda _payload: name


# internal billing-events.v1 type -> its public name (from the payload when one internal type is several)
PUBLIC_NAME_OF: Final[Mapping[str, Callable[[Mapping[str, Any]], str]]] = {
    "invoice.drafted": _same("invoice.drafted"),
    "invoice.finalized": _same("invoice.finalized"),
    "invoice.paid": _same("invoice.paid"),
    "invoice.payment_failed": _same("invoice.payment_failed"),
    "invoice.voided": _same("invoice.voided"),
    "invoice.uncollectible": _same("invoice.uncollectible"),
    "credit_note.created": _same("credit_note.created"),
    "subscription.status_changed": _subscription_status,
    "credits.granted": _same("credits.granted"),
    "credits.expired": _same("credits.expired"),
    "credits.balance_low": _same("credits.balance_low"),
    "alert.triggered": _same("alert.triggered"),
    "quota.threshold_reached": _same("quota.threshold_reached"),
    "quota.limit_reached": _same("quota.limit_reached"),
    "quota.on_track_to_exceed": _same("quota.on_track_to_limit"),
}


def public_event(internal_type: str, payload: Mapping[str, Any]) -> str | None:
    """The public name of an internal billing event, or None when it is not delivered to webhooks."""
    name_of = PUBLIC_NAME_OF.get(internal_type)
    return None if name_of is None else name_of(payload)


def unknown_events(names: list[str]) -> list[str]:
    """The names of an endpoint's subscription that are neither in the catalog nor `*`."""
    return [name for name in names if name != ALL_EVENTS and name not in CATALOG]


def subscribes(events: list[str], public_name: str) -> bool:
    """Whether an endpoint subscribed to `events` receives `public_name`."""
    return ALL_EVENTS in events or public_name in events

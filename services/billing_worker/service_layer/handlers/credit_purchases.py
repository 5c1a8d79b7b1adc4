"""Prepaid credit purchases (issue 15, item 3): a MANUAL invoice for the price, the credit granted once it is paid.

The purchase and its invoice are written in one transaction; the invoice goes the way of every invoice (numbered,
drawn from the customer balance, charged through the gateway). The grant happens where the invoice becomes paid:
`payments.payment_succeeded`, or its finalisation when the customer balance settled it
(`BillingUnitOfWork.grant_paid_purchase`); a voided or written-off invoice cancels the purchase.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from services.billing_worker.service_layer.errors import Refused
from services.billing_worker.service_layer.handlers import Handler
from services.billing_worker.service_layer.model import SubscriptionState
from services.billing_worker.service_layer.unit_of_work import BillingUnitOfWork
from shared.contracts.envelope import Envelope
from shared.contracts.messages import CheckAutoRecharge, PurchaseCredits
from shared.domain.catalog import MeterId
from shared.domain.credit_purchase import (
    PRODUCT_LINE,
    AutoRecharge,
    CreditPurchase,
    PurchaseOrigin,
    remaining_in_period,
)
from shared.domain.ids import InvoiceId, derived_id
from shared.domain.invoice import Invoice, InvoiceKey, InvoiceLine, InvoiceReason, LineKind
from shared.domain.ledger import as_money
from shared.domain.money import Money, UnitPrice
from shared.domain.subscription import SubscriptionStatus


def open_purchase(uow: BillingUnitOfWork, env: Envelope, state: SubscriptionState, purchase_id: str,
                  meter_id: str, amount_minor: int, price_minor: int, expires_at: datetime | None,
                  origin: PurchaseOrigin, now: datetime) -> CreditPurchase | None:
    """Invoice a purchase and store it pending; None when it exists already (a replay) or, for an auto-recharge,
    when one is pending for the meter already."""
    sub = state.subscription
    currency = state.currency
    invoice_id = InvoiceId(derived_id("in", "credit_purchase", purchase_id))
    purchase = CreditPurchase(purchase_id=purchase_id, subscription_id=sub.id, customer_id=sub.customer_id,
                              meter_id=meter_id, amount=Money(amount_minor, currency),
                              price=Money(price_minor, currency), invoice_id=invoice_id, created_at=now,
                              expires_at=expires_at, origin=origin)
    if not uow.add_credit_purchase(purchase):
        return None
    price = Money(price_minor, currency)
    line = InvoiceLine(kind=LineKind.ADJUSTMENT, description=f"{PRODUCT_LINE} ({meter_id})", amount=price,
                       quantity=Decimal(1), unit_price=UnitPrice.from_money(price))
    invoice = Invoice.draft(invoice_id=invoice_id, key=InvoiceKey(sub.id, InvoiceReason.MANUAL, sub.current_period),
                            customer_id=sub.customer_id, currency=currency, at=now, lines=[line])
    if state.tax_rate_bps:
        invoice.apply_tax(state.tax_rate_bps)
    uow.issue(invoice, state, sub.plan_id, env)
    uow.add_audit(occurred_at=now, action="credits.purchased", entity_type="credit_purchase", entity_id=purchase_id,
                  subscription_id=sub.id, customer_id=sub.customer_id, command_id=str(env.event_id),
                  detail={"meter_id": meter_id, "amount_minor": amount_minor, "price_minor": price_minor,
                          "invoice_id": invoice_id, "origin": origin.value})
    return purchase


def purchase_credits(uow: BillingUnitOfWork, env: Envelope, p: PurchaseCredits, now: datetime) -> dict[str, Any]:
    state = uow.subscription(p.subscription_id)
    if state.subscription.status is SubscriptionStatus.CANCELLED:
        raise Refused("subscription_cancelled", f"subscription {state.id} is cancelled: nothing can be sold on it")
    if uow.credit_kinds.get(p.meter_id, True):
        raise Refused("invalid_credit_grant", f"meter {p.meter_id} does not hold money credit")
    opened = open_purchase(uow, env, state, p.purchase_id, p.meter_id, p.amount_minor, p.price_minor,
                           p.expires_at, PurchaseOrigin.MANUAL, now)
    found = opened or uow.credit_purchase(p.purchase_id)
    if found is None:  # pragma: no cover - a manual purchase only conflicts on its own id
        raise Refused("duplicate_purchase", f"purchase {p.purchase_id} could not be stored")
    return {"purchase_id": found.purchase_id, "invoice_id": found.invoice_id, "replayed": opened is None}


def remaining_credit(uow: BillingUnitOfWork, state: SubscriptionState, meter_id: str, now: datetime) -> Money:
    """The meter's money credit left now (`remaining_in_period`: grants less the period's unbilled usage)."""
    sub = state.subscription
    balance = as_money(uow.ledger(state).ledger.balance(meter_id, now))
    pricing = uow.catalog.plan(sub.plan_id).meters.get(MeterId(meter_id))
    unit_price = pricing.unit_price if pricing is not None and pricing.price is None else None
    unbilled = uow.unbilled_usage(sub.id, meter_id, sub.current_period.start) if unit_price is not None else Decimal(0)
    return remaining_in_period(balance, unbilled, unit_price)


def recharge_if_due(uow: BillingUnitOfWork, env: Envelope, state: SubscriptionState, recharge: AutoRecharge,
                    now: datetime) -> CreditPurchase | None:
    """Buy `target - remaining` when the meter's credit is below the threshold; at most one recharge pending per
    subscription and meter (the second, a concurrent batch's, finds it and buys nothing)."""
    if state.subscription.status is SubscriptionStatus.CANCELLED or uow.credit_kinds.get(recharge.meter_id, True):
        return None
    due = recharge.due(remaining_credit(uow, state, recharge.meter_id, now))
    if due is None:
        return None
    purchase_id = derived_id("cp", "auto_recharge", state.id, recharge.meter_id, env.event_id)
    return open_purchase(uow, env, state, purchase_id, recharge.meter_id, due.amount_minor, due.amount_minor, None,
                         PurchaseOrigin.AUTO_RECHARGE, now)


def check_recharge(uow: BillingUnitOfWork, env: Envelope, p: CheckAutoRecharge, now: datetime) -> dict[str, Any]:
    state = uow.subscription(p.subscription_id)
    bought = [recharge_if_due(uow, env, state, r, now) for r in uow.auto_recharges(state.id)
              if r.meter_id == p.meter_id]
    return {"purchase_ids": [b.purchase_id for b in bought if b is not None]}


def recharge_after_close(uow: BillingUnitOfWork, env: Envelope, state: SubscriptionState, now: datetime) -> None:
    """A close consumed credits: recharge the meters that fell below their threshold."""
    for recharge in uow.auto_recharges(state.id):
        recharge_if_due(uow, env, state, recharge, now)


PURCHASE = Handler(purchase_credits)
CHECK_RECHARGE = Handler(check_recharge)

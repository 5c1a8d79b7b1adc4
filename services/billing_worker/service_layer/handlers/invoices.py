"""Corrections of issued invoices and one-off charges (issue 14): void, mark uncollectible, a manual invoice.

The worker is the only writer of invoices: these commands arrive on commands.v1 keyed by the invoice's
subscription (the edge looked the invoice up and waits for the outcome).

- void (draft, open or uncollectible): the invoice is VOID for good, its number stays used (numbers are
  gapless and a void invoice keeps its own); the attempts not dispatched yet are cancelled; what it drew from
  the customer balance goes back (a `void_restore` entry). An attempt already in flight that later succeeds
  is not accepted on the void invoice: `payments.payment_succeeded` audits it as `payment.on_void` for a
  refund.
- mark uncollectible (open): written off; attempts not dispatched are cancelled; dunning closes its case on
  `invoice.uncollectible` (services/dunning handlers: `_on_invoice_closed_elsewhere`).
- one-off charge: a `manual` invoice on the subscription, in its currency, finalised at commit like every
  invoice (numbered, balance-drawn by `BillingUnitOfWork.settle_with_balance`, the rest charged). Its id
  derives from the command's event id, so two one-offs at one billing instant are two invoices (the identity
  constraint on (subscription, period, kind) excludes `manual`).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from services.billing_worker.service_layer.announcements import invoice_event
from services.billing_worker.service_layer.errors import Refused
from services.billing_worker.service_layer.handlers import Handler, load_invoices_of
from services.billing_worker.service_layer.model import SubscriptionState
from services.billing_worker.service_layer.unit_of_work import BillingUnitOfWork
from shared.contracts.envelope import Envelope
from shared.contracts.messages import CreateOneOffInvoice, MarkInvoiceUncollectible, VoidInvoice
from shared.domain.customer_balance import BalanceEntryKind, balance_entry_id
from shared.domain.ids import InvoiceId, derived_id, event_uuid
from shared.domain.invoice import Invoice, InvoiceKey, InvoiceLine, InvoiceReason, InvoiceStatus, LineKind
from shared.domain.money import Money, UnitPrice
from shared.domain.subscription import SubscriptionStatus

VOIDABLE = (InvoiceStatus.DRAFT, InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE)


def _invoice_of(uow: BillingUnitOfWork, state: SubscriptionState, invoice_id: str) -> Invoice:
    found = uow.invoice(invoice_id)
    if found is None or found[0].subscription_id != state.id:
        raise Refused("unknown_invoice", f"invoice {invoice_id} is not one of subscription {state.id}")
    return found[0]


def void_invoice(uow: BillingUnitOfWork, env: Envelope, p: VoidInvoice, now: datetime) -> dict[str, Any]:
    state = uow.subscription(p.subscription_id)
    invoice = _invoice_of(uow, state, p.invoice_id)
    if invoice.status not in VOIDABLE:
        raise Refused("invoice_not_voidable", f"invoice {invoice.id} is {invoice.status.value}: only a draft, "
                                              "open or uncollectible invoice can be voided")
    invoice.void(at=now, reason=p.reason or "voided")
    invoice.pull_events()
    uow.save_invoice_status(invoice, at=now)
    uow.cancel_purchase_of(invoice, now)  # prepaid credit it sold is never granted
    uow.cancel_pending_attempts(invoice.id, now)
    restored = invoice.balance_applied_minor
    if restored > 0:
        uow.credit_customer_balance(
            invoice.customer_id, invoice.currency, restored, BalanceEntryKind.VOID_RESTORE,
            entry_id=balance_entry_id(BalanceEntryKind.VOID_RESTORE, invoice.id), invoice_id=invoice.id,
            description=f"Invoice {invoice.number or invoice.id} voided: its balance draw given back", at=now)
    uow.emit("invoice.voided", invoice_event(invoice, state), key=state.id,
             event_id=event_uuid(invoice.id, "invoice.voided"), at=now, correlation=env)
    uow.add_audit(occurred_at=now, action="invoice.voided", entity_type="invoice", entity_id=invoice.id,
                  subscription_id=state.id, customer_id=invoice.customer_id, command_id=str(env.event_id),
                  detail={"number": invoice.number, "reason": p.reason, "balance_restored_minor": restored})
    sub = state.subscription
    if sub.status is SubscriptionStatus.PAST_DUE and not [i for i in uow.open_invoices_of(sub.id)
                                                           if i != invoice.id]:
        sub.reactivate(at=now)  # the debt that made it past due is gone
    uow.subscription_events(state, env)
    return {"invoice_id": invoice.id, "invoice_status": invoice.status.value, "balance_restored_minor": restored}


def write_off(uow: BillingUnitOfWork, env: Envelope, state: SubscriptionState, invoice: Invoice, reason: str,
              now: datetime) -> None:
    """Write an open invoice off as uncollectible: stored, its pending attempts cancelled, `invoice.uncollectible`
    announced (dunning closes its case on it). The operator's mark-uncollectible and dunning's give-up."""
    invoice.mark_uncollectible(at=now, reason=reason)
    invoice.pull_events()
    uow.save_invoice_status(invoice, at=now)
    uow.cancel_purchase_of(invoice, now)  # prepaid credit it sold is granted only if paid after all
    uow.cancel_pending_attempts(invoice.id, now)
    uow.emit("invoice.uncollectible", invoice_event(invoice, state), key=state.id,
             event_id=event_uuid(invoice.id, "invoice.uncollectible"), at=now, correlation=env)


def mark_uncollectible(uow: BillingUnitOfWork, env: Envelope, p: MarkInvoiceUncollectible,
                       now: datetime) -> dict[str, Any]:
    state = uow.subscription(p.subscription_id)
    invoice = _invoice_of(uow, state, p.invoice_id)
    if invoice.status is not InvoiceStatus.OPEN:
        raise Refused("invoice_not_open", f"invoice {invoice.id} is {invoice.status.value}: only an open invoice "
                                          "can be marked uncollectible")
    write_off(uow, env, state, invoice, p.reason or "marked_uncollectible", now)
    uow.add_audit(occurred_at=now, action="invoice.marked_uncollectible", entity_type="invoice",
                  entity_id=invoice.id, subscription_id=state.id, customer_id=invoice.customer_id,
                  command_id=str(env.event_id), detail={"number": invoice.number, "reason": p.reason})
    return {"invoice_id": invoice.id, "invoice_status": invoice.status.value}


def create_one_off(uow: BillingUnitOfWork, env: Envelope, p: CreateOneOffInvoice, now: datetime) -> dict[str, Any]:
    state = uow.subscription(p.subscription_id)
    sub = state.subscription
    if sub.status is SubscriptionStatus.CANCELLED:
        raise Refused("subscription_cancelled", f"subscription {sub.id} is cancelled: nothing can be charged on it")
    currency = state.currency
    lines = []
    for line in p.lines:
        unit = line.unit_amount_minor
        amount = line.quantity * unit if unit is not None else line.amount_minor
        lines.append(InvoiceLine(
            kind=LineKind.ADJUSTMENT, description=line.description, amount=Money(amount, currency),
            quantity=Decimal(line.quantity),
            unit_price=UnitPrice.from_money(Money(unit, currency)) if unit is not None else None))
    total = sum(line.amount.amount_minor for line in lines)
    if total <= 0:
        raise Refused("invalid_charge", "a one-off charge must total more than zero (credits go through credit "
                                        "notes)")
    key = InvoiceKey(sub.id, InvoiceReason.MANUAL, sub.current_period)
    invoice = Invoice.draft(invoice_id=InvoiceId(derived_id("in", "manual", env.event_id)), key=key,
                            customer_id=sub.customer_id, currency=currency, at=now, lines=lines)
    rate = p.tax_rate_bps if p.tax_rate_bps is not None else state.tax_rate_bps
    if rate:
        invoice.apply_tax(rate)
    uow.issue(invoice, state, sub.plan_id, env)
    return {"invoice_id": invoice.id, "total_minor": invoice.total.amount_minor}


VOID = Handler(void_invoice, prefetch=load_invoices_of)
MARK_UNCOLLECTIBLE = Handler(mark_uncollectible, prefetch=load_invoices_of)
CREATE_ONE_OFF = Handler(create_one_off)

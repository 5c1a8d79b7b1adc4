"""Invoice corrections and one-off charges, the edge's half (issue 14): void, mark uncollectible, a manual invoice.

The worker is the only writer of invoices. The edge looks the invoice up in the read model, refuses what it can
know (an unknown invoice 404, one already paid or void, one not open), and sends the command keyed by the
invoice's subscription like any lifecycle command (`lifecycle.send_command`: outbox + audit in one transaction);
the route then waits for the worker's outcome, which is the last word (its refusal codes are the same).
A one-off charge is refused here when it charges nothing (`invalid_charge`) or its subscription is cancelled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from services.ingest.auth import Principal
from services.ingest.service_layer import lifecycle, views
from services.ingest.service_layer.lifecycle import Accepted
from services.ingest.service_layer.refusals import (
    InvalidCharge,
    InvoiceNotCollectible,
    NoLongerVoidable,
    NotOpen,
    PaymentInFlight,
    SubscriptionCancelled,
    UnknownInvoice,
    UnknownSubscription,
)
from services.ingest.service_layer.unit_of_work import UnitOfWorkFactory
from services.ingest.views import InvoiceView
from shared.contracts.messages import (
    CreateOneOffInvoice,
    MarkInvoiceUncollectible,
    OneOffLineRequest,
    RetryPayment,
    VoidInvoice,
)
from shared.domain.payment_attempt import UNSETTLED, AttemptStatus

VOIDABLE = frozenset({"draft", "open", "uncollectible"})
COLLECTIBLE = frozenset({"open", "uncollectible"})


@dataclass(frozen=True)
class ChargeLine:
    description: str
    amount_minor: int | None = None
    quantity: int = 1
    unit_amount_minor: int | None = None

    @property
    def total_minor(self) -> int:
        return self.quantity * self.unit_amount_minor if self.unit_amount_minor is not None else \
            int(self.amount_minor or 0)


def current(engine: sa.Engine, invoice_id: str, authorize: Callable[[str], None]) -> InvoiceView:
    """The invoice as the read model has it, the caller authorised for its customer."""
    found = views.invoice(engine, invoice_id)
    if found is None:
        raise UnknownInvoice(f"no invoice {invoice_id!r}", field="invoice_id")
    authorize(found.customer_id)
    return found


def void_invoice(uow: UnitOfWorkFactory, engine: sa.Engine, invoice_id: str, reason: str | None, *,
                 principal: Principal, authorize: Callable[[str], None], now: datetime,
                 request_id: str | None) -> Accepted:
    """Send `invoice.void`; refuses an unknown invoice and one already paid or void (`invoice_not_voidable`)."""
    found = current(engine, invoice_id, authorize)
    if found.status not in VOIDABLE:
        raise NoLongerVoidable(f"invoice {invoice_id} is {found.status}: only a draft, open or uncollectible "
                               "invoice can be voided", fields=[("invoice_id", "invoice_not_voidable")])

    def build(customer_id: str) -> VoidInvoice:
        return VoidInvoice(subscription_id=found.subscription_id, customer_id=customer_id, invoice_id=invoice_id,
                           reason=reason)

    return lifecycle.send_command(uow, found.subscription_id, build, "invoice.void", principal=principal,
                                  authorize=authorize, now=now, request_id=request_id, invoice_id=invoice_id)


def mark_uncollectible(uow: UnitOfWorkFactory, engine: sa.Engine, invoice_id: str, reason: str | None, *,
                       principal: Principal, authorize: Callable[[str], None], now: datetime,
                       request_id: str | None) -> Accepted:
    """Send `invoice.mark_uncollectible`; refuses an unknown invoice and one not open (`invoice_not_open`)."""
    found = current(engine, invoice_id, authorize)
    if found.status != "open":
        raise NotOpen(f"invoice {invoice_id} is {found.status}: only an open invoice can be marked uncollectible",
                      fields=[("invoice_id", "invoice_not_open")])

    def build(customer_id: str) -> MarkInvoiceUncollectible:
        return MarkInvoiceUncollectible(subscription_id=found.subscription_id, customer_id=customer_id,
                                        invoice_id=invoice_id, reason=reason)

    return lifecycle.send_command(uow, found.subscription_id, build, "invoice.mark_uncollectible",
                                  principal=principal, authorize=authorize, now=now, request_id=request_id,
                                  invoice_id=invoice_id)


def retry_payment(uow: UnitOfWorkFactory, engine: sa.Engine, invoice_id: str, payment_method_id: str | None, *,
                  principal: Principal, authorize: Callable[[str], None], now: datetime,
                  request_id: str | None) -> Accepted:
    """Send an operator's `payment.retry` (reason `manual`): the worker charges what the invoice still owes,
    numbering the attempt itself (dunning's numbers cannot collide with it), after saving `payment_method_id`
    as the subscription's card when one is given. Refuses an unknown invoice (404), one with nothing to collect
    (`invoice_not_collectible`: draft, paid, void) and one with an attempt still unsettled
    (`payment_in_flight`); the worker checks both again in its own transaction and has the last word."""
    found = current(engine, invoice_id, authorize)
    statuses = views.attempt_statuses(engine, invoice_id)
    if found.status not in COLLECTIBLE or AttemptStatus.SUCCEEDED.value in statuses:
        raise InvoiceNotCollectible(f"invoice {invoice_id} is {found.status}: only an open or uncollectible invoice "
                                    "not charged yet can be charged again",
                                    fields=[("invoice_id", "invoice_not_collectible")])
    if statuses & {s.value for s in UNSETTLED}:
        raise PaymentInFlight(f"invoice {invoice_id} has a payment attempt whose outcome is not in yet: retry once "
                              "it is settled", fields=[("invoice_id", "payment_in_flight")])

    def build(customer_id: str) -> RetryPayment:
        return RetryPayment(subscription_id=found.subscription_id, customer_id=customer_id, invoice_id=invoice_id,
                            reason="manual", payment_method_id=payment_method_id)

    return lifecycle.send_command(uow, found.subscription_id, build, "payment.retry", principal=principal,
                                  authorize=authorize, now=now, request_id=request_id, invoice_id=invoice_id,
                                  payment_method_id=payment_method_id)


def create_one_off(uow: UnitOfWorkFactory, engine: sa.Engine, customer_id: str, subscription_id: str,
                   lines: Sequence[ChargeLine], tax_rate_bps: int | None, *, principal: Principal,
                   authorize: Callable[[str], None], now: datetime, request_id: str | None) -> Accepted:
    """Send `invoice.create_one_off` for the subscription; refuses a charge of nothing (`invalid_charge`), an
    unknown subscription or one of another customer (404), a cancelled one (`subscription_cancelled`)."""
    if not lines or sum(line.total_minor for line in lines) <= 0:
        raise InvalidCharge("a one-off charge must total more than zero (credits go through credit notes)",
                            fields=[("lines", "invalid_charge")])
    found = views.subscription(engine, subscription_id)
    if found is None or found.customer_id != customer_id:
        raise UnknownSubscription(f"no subscription {subscription_id!r} of customer {customer_id!r}",
                                  field="subscription_id")
    authorize(found.customer_id)
    if found.status == "cancelled":
        raise SubscriptionCancelled(f"subscription {subscription_id} is cancelled",
                                    fields=[("subscription_id", "subscription_cancelled")])
    wire = [OneOffLineRequest(description=line.description, amount_minor=line.total_minor, quantity=line.quantity,
                              unit_amount_minor=line.unit_amount_minor) for line in lines]

    def build(owner: str) -> CreateOneOffInvoice:
        return CreateOneOffInvoice(subscription_id=subscription_id, customer_id=owner, lines=wire,
                                   tax_rate_bps=tax_rate_bps)

    return lifecycle.send_command(uow, subscription_id, build, "invoice.create_one_off", principal=principal,
                                  authorize=authorize, now=now, request_id=request_id,
                                  total_minor=sum(line.total_minor for line in lines))

"""Payments: outcomes reported on payments.v1 (succeeded, failed), dunning's retry and give-up, and the
payment method on file. Payment attempt rows are written *before* the executor calls the provider."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from services.billing_worker.service_layer.announcements import invoice_event
from services.billing_worker.service_layer.errors import Ignored, MessageRejected, Refused
from services.billing_worker.service_layer.handlers import Handler, load_invoices_of
from services.billing_worker.service_layer.handlers.credit_notes import REDUCTION_ATTEMPTS_FROM
from services.billing_worker.service_layer.handlers.invoices import write_off
from services.billing_worker.service_layer.handlers.periods import close_final
from services.billing_worker.service_layer.unit_of_work import BillingUnitOfWork
from shared.contracts.envelope import Envelope
from shared.contracts.messages import (
    GiveUpDunning,
    PaymentFailed,
    PaymentMethodUpdated,
    PaymentSucceeded,
    RetryPayment,
    UpdatePaymentMethod,
)
from shared.domain.calendar import ensure_utc
from shared.domain.ids import attempt_id_for, event_uuid
from shared.domain.invoice import InvoiceStatus
from shared.domain.money import Money
from shared.domain.payment_attempt import UNSETTLED, AttemptStatus, PaymentAttempt
from shared.domain.subscription import SubscriptionStatus


def update_payment_method(uow: BillingUnitOfWork, env: Envelope, p: UpdatePaymentMethod, now: datetime) -> None:
    state = uow.subscription(p.subscription_id)
    state.subscription.use_payment_method(p.payment_method_id)
    uow.emit("payment_method.updated", PaymentMethodUpdated(
        subscription_id=state.id, customer_id=state.subscription.customer_id,
        payment_method_id=p.payment_method_id), key=state.id, event_id=event_uuid(env.event_id, "pm"),
        at=now, correlation=env)
    uow.touch(state)


def retry_payment(uow: BillingUnitOfWork, env: Envelope, p: RetryPayment, now: datetime) -> dict[str, Any]:
    """Charge an open (or, an operator's retry, uncollectible) invoice's remaining amount again.

    The worker is the single writer of an invoice's attempts, so it numbers them: an operator's retry (no
    number) takes the invoice's next free one and is refused while an attempt is unsettled
    (`payment_in_flight`); dunning's retry whose number an operator's retry took meanwhile gets the next free
    one instead of being dropped (its attempt id derives from the number)."""
    state = uow.subscription(p.subscription_id)
    found = uow.invoice(p.invoice_id)
    if found is None:
        raise Refused("not_found", f"invoice {p.invoice_id} does not exist")
    invoice, _row = found
    manual = p.reason == "manual"
    due = invoice.amount_remaining.amount_minor
    if invoice.status not in (InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE) or due <= 0:
        detail = f"invoice {invoice.id} is {invoice.status.value} with {due} left to collect"
        if manual:
            raise Refused("invoice_not_collectible", detail + ": only an open or uncollectible invoice with "
                          "something left to collect can be charged again")
        raise Ignored(detail + ": nothing to collect")
    taken = uow.attempts_of(invoice.id)
    if manual and AttemptStatus.SUCCEEDED.value in taken.values():
        raise Refused("invoice_not_collectible", f"invoice {invoice.id} was charged successfully: its payment is "
                      "on its way")
    if manual and any(AttemptStatus(status) in UNSETTLED for status in taken.values()):
        raise Refused("payment_in_flight", f"invoice {invoice.id} has a payment attempt whose outcome is not in "
                      "yet: retry once it is settled")
    # NOTE: retries (dunning's and operators') are numbered below the credit notes' reduction attempts, whose
    # numbers (from REDUCTION_ATTEMPTS_FROM) follow the count of the invoice's notes.
    next_free = max((n for n in taken if n < REDUCTION_ATTEMPTS_FROM), default=0) + 1
    asked = p.attempt_no
    attempt_no = asked if asked is not None and asked not in taken and asked < REDUCTION_ATTEMPTS_FROM else next_free
    if p.payment_method_id is not None and p.payment_method_id != state.subscription.payment_method_id:
        update_payment_method(uow, env, UpdatePaymentMethod(
            subscription_id=state.id, customer_id=state.subscription.customer_id,
            payment_method_id=p.payment_method_id), now)
    uow.add_attempt(PaymentAttempt.request(
        attempt_id=attempt_id_for(invoice.id, attempt_no), invoice_id=invoice.id, attempt_no=attempt_no,
        subscription_id=state.id,
        customer_id=state.subscription.customer_id, amount=Money(due, invoice.currency),
        payment_method_id=state.subscription.payment_method_id, requested_at=now, reason=p.reason))
    return {"invoice_id": invoice.id, "attempt_no": attempt_no, "requested_attempt_no": p.attempt_no}


def give_up(uow: BillingUnitOfWork, env: Envelope, p: GiveUpDunning, now: datetime) -> dict[str, Any]:
    state = uow.subscription(p.subscription_id)
    found = uow.invoice(p.invoice_id)
    if found is None:
        raise Refused("not_found", f"invoice {p.invoice_id} does not exist")
    invoice, _ = found
    if invoice.status is not InvoiceStatus.OPEN:
        raise Ignored(f"invoice {invoice.id} is {invoice.status.value}")
    write_off(uow, env, state, invoice, "dunning_gave_up", now)
    final_invoice_id = None
    if state.subscription.status is not SubscriptionStatus.CANCELLED:
        # Giving up ends the subscription like a cancellation now: its open period is closed and invoiced.
        final_invoice_id = close_final(uow, env, state, now, "dunning_gave_up")
    uow.subscription_events(state, env)
    return {"invoice_id": invoice.id, "final_invoice_id": final_invoice_id}


def load_outcomes_of(uow: BillingUnitOfWork, messages: Sequence[tuple[Envelope, Any]], at: datetime) -> None:
    """Prefetch for a run of payment outcomes: their invoices, their attempts' statuses (most outcomes are the
    executor's, whose attempts it settled already: nothing to write on them) and the credit purchases their
    invoices sold (a paid purchase is granted)."""
    load_invoices_of(uow, messages, at)
    uow.load_attempt_statuses([str(p.attempt_id) for _, p in messages if p.attempt_id])
    uow.load_purchases_of_invoices(sorted({str(p.invoice_id) for _, p in messages}))


def payment_succeeded(uow: BillingUnitOfWork, env: Envelope, p: PaymentSucceeded, now: datetime) -> None:
    state = uow.subscription(p.subscription_id)
    found = uow.invoice(p.invoice_id)
    if found is None:
        raise MessageRejected(f"payment for unknown invoice {p.invoice_id}", code="unknown_invoice")
    invoice, row = found
    if p.attempt_id:
        uow.settle_attempt(p.attempt_id, "succeeded", p.provider_ref, None, False, now)
    if invoice.status is InvoiceStatus.PAID:
        paid_ref = uow.paid_refs.get(invoice.id, row.provider_ref)
        duplicate = []
        if p.provider_ref and paid_ref and p.provider_ref != paid_ref:
            # NOTE: a second successful charge of one invoice must never be silent: it is audited
            # for a refund (the constraints make it impossible through our own executor). The row rides on
            # the refusal, which rolls back everything the use case wrote.
            duplicate.append({"occurred_at": now, "action": "payment.duplicate", "entity_type": "invoice",
                              "entity_id": invoice.id, "subscription_id": state.id,
                              "detail": {"provider_ref": p.provider_ref, "paid_ref": paid_ref}})
        raise Ignored(f"invoice {invoice.id} is already paid", audit=duplicate)
    if invoice.status is InvoiceStatus.VOID:
        # NOTE: a charge in flight when the invoice was voided succeeded afterwards: the money is not the
        # void invoice's; audited for a refund, never accepted silently.
        raise Ignored(f"invoice {invoice.id} is void: payment audited for a refund", audit=[
            {"occurred_at": now, "action": "payment.on_void", "entity_type": "invoice", "entity_id": invoice.id,
             "subscription_id": state.id, "customer_id": invoice.customer_id,
             "detail": {"provider_ref": p.provider_ref, "attempt_id": p.attempt_id}}])
    if invoice.status not in (InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE):
        raise Ignored(f"invoice {invoice.id} is {invoice.status.value}")
    paid_at = ensure_utc(p.paid_at)
    invoice.mark_paid(at=paid_at, payment_reference=p.provider_ref)
    invoice.pull_events()
    uow.mark_paid(invoice, p.provider_ref)  # written at commit with the run's other paid invoices
    uow.emit("invoice.paid", invoice_event(invoice, state), key=state.id,
             event_id=event_uuid(invoice.id, "invoice.paid"), at=paid_at, correlation=env)
    # Prepaid credit sold by this invoice, if any: usable from the worker's billing instant (the provider's paid_at
    # is another clock's, e.g. a simulated billing clock's wall-clock webhook).
    uow.grant_paid_purchase(invoice, state, now, env)
    sub = state.subscription
    if sub.status is SubscriptionStatus.PAST_DUE and not [
            i for i in uow.open_invoices_of(sub.id) if i != invoice.id and i not in uow.paid_refs]:
        sub.reactivate(at=paid_at)
    if sub.pending_events:  # NOTE: a payment that changes nothing on the subscription does not rewrite its row
        uow.subscription_events(state, env)


def payment_failed(uow: BillingUnitOfWork, env: Envelope, p: PaymentFailed, now: datetime) -> None:
    state = uow.subscription(p.subscription_id)
    found = uow.invoice(p.invoice_id)
    if found is None:
        raise MessageRejected(f"payment failure for unknown invoice {p.invoice_id}", code="unknown_invoice")
    invoice, _ = found
    if p.attempt_id and not uow.settle_attempt(p.attempt_id, "declined", p.provider_ref, p.decline_code,
                                               p.hard_decline, now):
        if p.source == "reconciliation":
            raise Ignored(f"attempt {p.attempt_id} was already settled")
    if invoice.status is not InvoiceStatus.OPEN:
        raise Ignored(f"invoice {invoice.id} is {invoice.status.value}")
    failed_at = ensure_utc(p.failed_at)
    attempt_no = uow.attempt_no(p.attempt_id)
    uow.record_failed_attempt(invoice.id, p.decline_code)
    uow.emit("invoice.payment_failed", invoice_event(
        invoice, state, decline_code=p.decline_code, hard_decline=p.hard_decline, attempt_no=attempt_no),
        key=state.id, event_id=event_uuid(invoice.id, "invoice.payment_failed", p.attempt_id or env.event_id),
        at=failed_at, correlation=env)
    sub = state.subscription
    if sub.status in (SubscriptionStatus.ACTIVE, SubscriptionStatus.TRIALING):
        sub.mark_past_due(at=failed_at, reason="payment_failed")
    uow.subscription_events(state, env)


UPDATE_PAYMENT_METHOD = Handler(update_payment_method)
RETRY = Handler(retry_payment, prefetch=load_invoices_of)
GIVE_UP = Handler(give_up, prefetch=load_invoices_of)
SUCCEEDED = Handler(payment_succeeded, prefetch=load_outcomes_of, answers=False)
FAILED = Handler(payment_failed, prefetch=load_outcomes_of, answers=False)

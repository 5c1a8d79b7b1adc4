"""Credit notes: `credit_note.issue` (an operator, through `POST /v1/invoices/{id}/credit-notes`) and the
unused-fee credit note of a cancel-now or give-up (`periods.close_final`, by the plan's policy).

The domain decides the note (`shared.domain.credit_note.issue_credit_note`: limits, tax, the split); this use
case carries it out in the batch transaction: the note is numbered and stored, its reduced part lowers what
the invoice still owes (settling it at zero; attempts not sent yet for the old amount are withdrawn and one is
requested for what is left), its credited part goes to the customer balance (H1's port), and its refunded part
is a pending refund row that the refund executor sends through the gateway after the commit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from services.billing_worker.service_layer.announcements import invoice_event
from services.billing_worker.service_layer.errors import Refused
from services.billing_worker.service_layer.handlers import Handler
from services.billing_worker.service_layer.unit_of_work import BillingUnitOfWork
from shared.contracts.envelope import Envelope
from shared.contracts.messages import IssueCreditNote
from shared.domain.credit_note import CreditNote, CreditNoteReason, issue_credit_note
from shared.domain.ids import attempt_id_for, derived_id, event_uuid
from shared.domain.invoice import Invoice, InvoiceStatus
from shared.domain.payment_attempt import PaymentAttempt

# NOTE: attempts requested after a partial reduction are numbered from here, apart from dunning's retries
# (1, 2, 3, ...), so the two never take the same (invoice, attempt_no).
REDUCTION_ATTEMPTS_FROM = 1000


def credit_note_id_for(command_id: object) -> str:
    return derived_id("cn", command_id)


def issue(uow: BillingUnitOfWork, env: Envelope, p: IssueCreditNote, now: datetime) -> dict[str, Any]:
    found = uow.invoice(p.invoice_id)
    if found is None or found[0].subscription_id != p.subscription_id:
        raise Refused("not_found", f"invoice {p.invoice_id} does not exist")
    invoice, row = found
    note = issue_credit_note(
        credit_note_id=credit_note_id_for(env.event_id), invoice=invoice,
        earlier=uow.earlier_credit_notes(invoice.id), reason=CreditNoteReason(p.reason), at=now,
        lines=[(line.line_no, line.amount_minor) for line in p.lines] if p.lines is not None else None,
        amount_minor=p.amount_minor, refund_minor=p.refund_minor, credit_minor=p.credit_minor, memo=p.memo)
    return carry_out(uow, note, invoice, row, now, command=env)


def carry_out(uow: BillingUnitOfWork, note: CreditNote, invoice: Invoice, row: Any, at: datetime, *,
              command: Envelope) -> dict[str, Any]:
    """Store `note` and apply its three parts (module docstring); returns the outcome's result."""
    earlier = len(uow.earlier_credit_notes(invoice.id))
    number = uow.store_credit_note(note, issuer=row.issuer, payment_ref=row.provider_ref)
    state = uow.subscription(invoice.subscription_id)
    if note.reduced.is_positive():
        invoice.credit_before_payment(note.reduced, at=at)
        withdrawn = uow.save_invoice_credit(invoice, at)
        if withdrawn and invoice.status is InvoiceStatus.OPEN and invoice.amount_remaining.is_positive():
            attempt_no = REDUCTION_ATTEMPTS_FROM + earlier
            uow.add_attempt(PaymentAttempt.request(
                attempt_id=attempt_id_for(invoice.id, attempt_no), invoice_id=invoice.id, attempt_no=attempt_no,
                subscription_id=state.id, customer_id=state.subscription.customer_id,
                amount=invoice.amount_remaining, payment_method_id=state.subscription.payment_method_id,
                requested_at=at, reason="credit_note"))
        if invoice.status is InvoiceStatus.PAID:
            invoice.pull_events()
            uow.emit("invoice.paid", invoice_event(invoice, state), key=state.id,
                     event_id=event_uuid(invoice.id, "invoice.paid"), at=at, correlation=command)
    if note.credited.is_positive():
        uow.credit_customer_balance(
            note.customer_id, note.currency, note.credited.amount_minor, "credit_note",
            entry_id=f"credit_note|{note.id}", invoice_id=invoice.id, credit_note_id=note.id,
            description=f"Credit note {number}", at=at)
    coupon_given_back = False
    if note.fully_credits:
        # NOTE: a whole-invoice note undoes the invoice like a void: its coupon redemption stops counting, so a
        # coupon limited to N invoices still discounts the next one (usage credits are never given back: the
        # invoice charged only what they did not cover).
        coupon_given_back = state.subscription.give_back_coupon_redemption(str(invoice.key))
        if coupon_given_back:
            uow.touch(state)
    result = {"credit_note_id": note.id, "number": number, "invoice_id": invoice.id,
              "total_minor": note.total.amount_minor, "tax_minor": note.tax.amount_minor,
              "reduced_minor": note.reduced.amount_minor, "refunded_minor": note.refunded.amount_minor,
              "credited_minor": note.credited.amount_minor, "currency": note.currency,
              "invoice_status": invoice.status.value, "coupon_redemption_given_back": coupon_given_back}
    uow.add_audit(occurred_at=at, action="credit_note.issued", entity_type="credit_note", entity_id=note.id,
                  subscription_id=state.id, customer_id=note.customer_id, command_id=str(command.event_id),
                  detail={**result, "reason": note.reason.value})
    return result


ISSUE = Handler(issue)

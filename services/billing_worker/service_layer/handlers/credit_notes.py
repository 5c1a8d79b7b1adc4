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
from services.billing_worker.service_layer.model import SubscriptionState
from services.billing_worker.service_layer.unit_of_work import BillingUnitOfWork
from shared.contracts.envelope import Envelope
from shared.contracts.messages import CreditNoteCreated, IssueCreditNote
from shared.domain.calendar import Period
from shared.domain.catalog import UnusedFeePolicy
from shared.domain.credit_note import CREDITABLE_STATUSES, CreditNote, CreditNoteReason, issue_credit_note
from shared.domain.ids import attempt_id_for, derived_id, event_uuid
from shared.domain.invoice import Invoice, InvoiceStatus
from shared.domain.payment_attempt import PaymentAttempt
from shared.domain.proration import prorated

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
    uow.emit("credit_note.created", CreditNoteCreated(
        credit_note_id=note.id, number=number, invoice_id=invoice.id, subscription_id=state.id,
        customer_id=note.customer_id, reason=note.reason.value, currency=note.currency,
        total_minor=note.total.amount_minor, reduced_minor=note.reduced.amount_minor,
        refunded_minor=note.refunded.amount_minor, credited_minor=note.credited.amount_minor),
        key=state.id, event_id=event_uuid(note.id, "credit_note.created"), at=at, correlation=command)
    uow.add_audit(occurred_at=at, action="credit_note.issued", entity_type="credit_note", entity_id=note.id,
                  subscription_id=state.id, customer_id=note.customer_id, command_id=str(command.event_id),
                  detail={**result, "reason": note.reason.value})
    return result


def credit_unused_fee(uow: BillingUnitOfWork, env: Envelope, state: SubscriptionState, period: Period,
                      at: datetime) -> str | None:
    """The plan's unused-fee policy on a cancel-now or a give-up at `at` inside `period` (whose fee was paid in
    advance): the unused part of the fee, prorated to the second like a plan change (``proration.prorated``),
    becomes a credit note (reason order_change) on the fee line of the invoice that charged `period`, capped
    by what earlier notes left of that line; tax follows in proportion. `credit`: the domain's default split
    (what the invoice still owes is reduced first, the rest goes to the balance); `refund`: what was paid in cash
    is refunded, the rest reduces what is owed (a give-up's fee invoice was probably never paid). Returns the
    credit note's id, or None (policy `none`, nothing unused, no fee invoice)."""
    sub = state.subscription
    plan = uow.catalog.plan(sub.plan_id)
    if plan.unused_fee_policy is UnusedFeePolicy.NONE or not period.start <= at < period.end:
        return None
    found = uow.fee_line_of(sub.id, period.start, period.end)
    loaded = uow.invoice(found[0]) if found is not None else None
    if found is None or loaded is None:
        return None
    (invoice, row), line_no = loaded, found[1]
    earlier = uow.earlier_credit_notes(invoice.id)
    left = invoice.lines[line_no - 1].amount.amount_minor - sum(
        amount for note in earlier for n, amount in note.lines if n == line_no)
    unused = min(prorated(plan.fee(sub.seats), period, at).amount_minor, left)
    if unused <= 0 or invoice.status not in CREDITABLE_STATUSES:
        return None
    note_id = derived_id("cn", env.event_id, "unused_fee")

    def note(refund_minor: int | None) -> CreditNote:
        return issue_credit_note(credit_note_id=note_id, invoice=invoice, earlier=earlier,
                                 reason=CreditNoteReason.ORDER_CHANGE, at=at, lines=[(line_no, unused)],
                                 refund_minor=refund_minor, memo=f"unused part of the {plan.name} fee "
                                 f"({plan.unused_fee_policy.value} policy)")
    issued = note(None)
    if plan.unused_fee_policy is UnusedFeePolicy.REFUND:
        refundable = invoice.amount_paid_minor - sum(n.refunded_minor for n in earlier)
        issued = note(max(min(issued.total.amount_minor, refundable), 0))
    carry_out(uow, issued, invoice, row, at, command=env)
    return issued.id


ISSUE = Handler(issue)

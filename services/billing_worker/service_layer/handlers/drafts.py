"""Finalising a draft invoice (issue 14, item 2): `invoice.finalize`, sent by the scheduler when the draft's
grace ends or by the edge for `POST /v1/invoices/{id}/finalize`.

A period close with a grace stores its invoice DRAFT (`periods.close_period`). Finalising it first bills the
usage of its period that arrived since the close (`uow.grace_usage`) on it, re-rated by the domain
(`rating.rate_grace_usage`: the total is what the close would have billed had that usage arrived before the
period end), settles the period's included credits the draft kept, then finalises it through the same path as
every invoice (`BillingUnitOfWork.finalise_draft` -> `_finalise`: numbered, balance, payment attempt, events).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from services.billing_worker.service_layer.errors import Ignored, Refused
from services.billing_worker.service_layer.handlers import Handler
from services.billing_worker.service_layer.unit_of_work import BillingUnitOfWork
from shared.contracts.envelope import Envelope
from shared.contracts.messages import FinalizeInvoice
from shared.domain.calendar import ensure_utc
from shared.domain.invoice import Invoice, InvoiceStatus
from shared.domain.rating import rate_grace_usage


def _draft(uow: BillingUnitOfWork, p: FinalizeInvoice) -> tuple[Invoice, Any]:
    """Refused `not_found` for an invoice that is not this subscription's; Ignored when it is no longer a
    draft (finalised already, by the scheduler or an earlier request, or in this run)."""
    found = uow.invoice(p.invoice_id)
    if found is None or found[0].subscription_id != p.subscription_id:
        raise Refused("not_found", f"invoice {p.invoice_id} does not exist")
    invoice = found[0]
    if invoice.status is not InvoiceStatus.DRAFT or any(i.invoice.id == invoice.id for i in uow.issued):
        raise Ignored(f"invoice {invoice.id} is {invoice.status.value}, not a draft")
    return found


def finalizable(uow: BillingUnitOfWork, p: FinalizeInvoice, now: datetime) -> None:
    _draft(uow, p)


def finalize_invoice(uow: BillingUnitOfWork, env: Envelope, p: FinalizeInvoice, now: datetime) -> dict[str, Any]:
    draft, row = _draft(uow, p)
    state = uow.subscription(draft.subscription_id)
    # NOTE: finalised at the end of its grace when the command is applied later than that (a backlog), so a
    # late application numbers and charges it as an on-time one would; at once when asked before.
    due = getattr(row, "finalizes_at", None)
    at = min(now, ensure_utc(due)) if due is not None else now
    plan_id = row.plan_id or state.subscription.plan_id
    sub = state.subscription
    coupon = uow.catalog.coupon(sub.coupon.coupon_id) if sub.coupon else None
    usage = uow.grace_usage(state.id, draft.period.start, draft.period.end)
    result = rate_grace_usage(draft=draft, subscription=sub, plan=uow.catalog.plan(plan_id), usage=usage,
                              credits=uow.ledger(state).ledger, coupon=coupon)
    if result.coupon_redemption is not None:
        uow.redemptions.append((result.coupon_redemption, state.id, draft.id, at))
    uow.expire_credits(state, draft.period.end, env)  # the period's included credits, kept for the grace
    uow.subscription_events(state, env)
    if not result.invoice.lines:
        return _discard_empty(uow, env, result.invoice, state.id, at)
    uow.finalise_draft(result.invoice, state, plan_id, env, at)
    uow.invoices[draft.id] = (result.invoice, row)
    added = {m: str(q) for m, q in sorted(usage.added.items())}
    return {"invoice_id": draft.id, "usage_added": added}


def _discard_empty(uow: BillingUnitOfWork, env: Envelope, draft: Invoice, subscription_id: str,
                   at: datetime) -> dict[str, Any]:
    """A draft that still bills nothing at the end of its grace (a close kept it in case usage landed on it) is
    voided unnumbered: no 0.00 invoice takes a number, and the row stays as the trace of the close."""
    draft.void(at=at, reason="nothing_to_bill")
    draft.pull_events()  # never finalised: nobody was told of it, so no invoice.voided either
    uow.save_invoice_status(draft, at=at)
    uow.add_audit(occurred_at=at, action="invoice.discarded", entity_type="invoice", entity_id=draft.id,
                  subscription_id=subscription_id, customer_id=draft.customer_id, command_id=str(env.event_id),
                  detail={"reason": "nothing_to_bill"})
    return {"invoice_id": draft.id, "invoice_status": draft.status.value}


FINALIZE_INVOICE = Handler(finalize_invoice, precheck=finalizable)

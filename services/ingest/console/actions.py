"""The console's operator actions: void an invoice, retry its payment, issue a credit note, cancel a
subscription, top up a customer's credit balance, advance the simulated billing clock.

Each is two steps: a GET shows what will happen and a form (the confirmation), the POST (CSRF-checked) calls
the API's own route function with the request body the API would get, as the logged-in admin key. So the
console runs exactly the API's use case, its validation and its refusals (shown on an error page with their
code); a command the worker has not answered within the wait is reported as sent, not as done.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from services.ingest.console.session import ConsoleSession
from services.ingest.console.web import (
    PREFIX,
    ConsoleError,
    ConsoleRoute,
    console_session,
    container_of,
    page,
    principal_of,
    require_csrf,
)
from services.ingest.routes import clock as clock_routes
from services.ingest.routes import credit_notes as credit_note_routes
from services.ingest.routes import invoices as invoice_routes
from services.ingest.routes import subscriptions as subscription_routes
from services.ingest.routes.subscriptions import unit_of_work
from services.ingest.service_layer import views
from shared.domain.money import Money, minor_units

router = APIRouter(include_in_schema=False, route_class=ConsoleRoute)  # included by `pages` under /console
CREDIT_NOTE_REASONS = ("duplicate", "fraudulent", "order_change", "product_unsatisfactory")


def _done(path: str, done: str, status: int) -> Response:
    """Back to the entity's page, saying what happened (202: sent, the worker has not answered yet)."""
    return RedirectResponse(f"{PREFIX}{path}?done={done if status != 202 else 'pending'}", status_code=303)


def _body(model: type[Any], **fields: Any) -> Any:
    """The API's request model, validated as the API validates it (a refusal page on invalid input)."""
    try:
        return model(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConsoleError(422, "Invalid input", f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}",
                           "validation") from exc


def minor_amount(text: str, currency: str) -> int:
    """'12.50' USD -> 1250; refused when it is not a number or is finer than the currency's minor unit."""
    try:
        amount = Decimal(text.strip().replace(",", ""))
    except InvalidOperation as exc:
        raise ConsoleError(422, "Invalid amount", f"{text!r} is not an amount", "validation") from exc
    if not amount.is_finite() or amount != amount.quantize(Decimal(1).scaleb(-minor_units(currency))):
        raise ConsoleError(422, "Invalid amount", f"{text!r} is not an amount in {currency}", "validation")
    return Money.of(amount, currency).amount_minor


async def _invoice(request: Request, invoice_id: str) -> Any:
    found = await run_in_threadpool(views.invoice, container_of(request).engine, invoice_id)
    if found is None:
        raise ConsoleError(404, "Unknown invoice", f"no invoice {invoice_id!r}", "not_found")
    return found


@router.get("/invoices/{invoice_id}/void")
async def confirm_void(request: Request, invoice_id: str,
                       session: ConsoleSession = Depends(console_session)) -> Response:
    inv = await _invoice(request, invoice_id)
    return page(request, "confirm.html", session, title=f"Void invoice {inv.number or inv.invoice_id}?",
                explain=f"It is {inv.status}, {Money(inv.total_minor, inv.currency)}. Voiding cancels its pending "
                        "payment attempts and gives back what it drew from the customer balance; its number stays "
                        "used. This cannot be undone.",
                action=f"{PREFIX}/invoices/{quote(invoice_id)}/void", button="Void the invoice",
                fields=[{"name": "reason", "label": "Reason (optional)"}],
                back=f"{PREFIX}/invoices/{quote(invoice_id)}")


@router.post("/invoices/{invoice_id}/void")
async def void(request: Request, invoice_id: str, csrf: str = Form(""), reason: str = Form(""),
               session: ConsoleSession = Depends(console_session)) -> Response:
    require_csrf(request, session, csrf)
    container = container_of(request)
    body = _body(invoice_routes.CorrectionRequest, reason=reason.strip() or None)
    answer = await invoice_routes.void_invoice(invoice_id, request, body, principal_of(session), container,
                                               unit_of_work(container))
    return _done(f"/invoices/{quote(invoice_id)}", "voided", answer.status_code)


@router.get("/invoices/{invoice_id}/retry-payment")
async def confirm_retry_payment(request: Request, invoice_id: str,
                                session: ConsoleSession = Depends(console_session)) -> Response:
    inv = await _invoice(request, invoice_id)
    return page(request, "confirm.html", session, title=f"Retry the payment of invoice {inv.number or inv.invoice_id}?",
                explain=f"It is {inv.status}, {Money(inv.total_minor, inv.currency)} ("
                        f"{Money(inv.amount_paid_minor, inv.currency)} paid). What it still owes is charged again "
                        "now, as a new payment attempt numbered after every earlier one (dunning's scheduled "
                        "retries go on with their own). Give the customer's new card to save and charge it, or "
                        "leave it empty to charge the card on file. Refused while an attempt is still unsettled.",
                action=f"{PREFIX}/invoices/{quote(invoice_id)}/retry-payment", button="Retry the payment",
                fields=[{"name": "payment_method_id", "label": "New payment method id (optional, pm_…)"}],
                back=f"{PREFIX}/invoices/{quote(invoice_id)}")


@router.post("/invoices/{invoice_id}/retry-payment")
async def retry_payment(request: Request, invoice_id: str, csrf: str = Form(""), payment_method_id: str = Form(""),
                        session: ConsoleSession = Depends(console_session)) -> Response:
    require_csrf(request, session, csrf)
    container = container_of(request)
    body = _body(invoice_routes.RetryPaymentRequest, payment_method_id=payment_method_id.strip() or None)
    answer = await invoice_routes.retry_payment(invoice_id, request, body, principal_of(session), container,
                                                unit_of_work(container))
    return _done(f"/invoices/{quote(invoice_id)}", "retried", answer.status_code)


@router.get("/invoices/{invoice_id}/credit-note")
async def confirm_credit_note(request: Request, invoice_id: str,
                              session: ConsoleSession = Depends(console_session)) -> Response:
    inv = await _invoice(request, invoice_id)
    return page(request, "confirm.html", session, title=f"Credit note on invoice {inv.number or inv.invoice_id}",
                explain=f"Invoice total {Money(inv.total_minor, inv.currency)} ({inv.status}). The amount (tax "
                        "included) first reduces what the invoice still owes; the rest is credited to the "
                        "customer's balance.",
                action=f"{PREFIX}/invoices/{quote(invoice_id)}/credit-note", button="Issue the credit note",
                fields=[{"name": "amount", "label": f"Amount ({inv.currency})", "required": True},
                        {"name": "memo", "label": "Memo (optional)"}],
                choices={"name": "reason", "label": "Reason", "options": CREDIT_NOTE_REASONS},
                back=f"{PREFIX}/invoices/{quote(invoice_id)}")


@router.post("/invoices/{invoice_id}/credit-note")
async def credit_note(request: Request, invoice_id: str, csrf: str = Form(""), amount: str = Form(""),
                      reason: str = Form(""), memo: str = Form(""),
                      session: ConsoleSession = Depends(console_session)) -> Response:
    require_csrf(request, session, csrf)
    inv = await _invoice(request, invoice_id)
    container = container_of(request)
    body = _body(credit_note_routes.CreditNoteRequest, amount_minor=minor_amount(amount, inv.currency),
                 reason=reason, memo=memo.strip() or None)
    answer = await credit_note_routes.issue_credit_note(invoice_id, body, request, principal_of(session),
                                                        container, unit_of_work(container))
    return _done(f"/invoices/{quote(invoice_id)}", "credited", answer.status_code)


@router.get("/subscriptions/{subscription_id}/cancel")
async def confirm_cancel(request: Request, subscription_id: str,
                         session: ConsoleSession = Depends(console_session)) -> Response:
    sub = await run_in_threadpool(views.subscription, container_of(request).engine, subscription_id)
    if sub is None:
        raise ConsoleError(404, "Unknown subscription", f"no subscription {subscription_id!r}", "not_found")
    return page(request, "confirm.html", session, title=f"Cancel subscription {subscription_id}?",
                explain=f"{sub.plan_id}, {sub.status}, period ending {sub.current_period_end:%Y-%m-%d %H:%M}. "
                        "Now: the open period is closed at this instant by a final invoice. At the period end: it "
                        "runs to the end of the period and is not renewed.",
                action=f"{PREFIX}/subscriptions/{quote(subscription_id)}/cancel", button="Cancel the subscription",
                fields=[{"name": "reason", "label": "Reason (optional)"}],
                choices={"name": "when", "label": "When", "options": ("period_end", "now")},
                back=f"{PREFIX}/subscriptions/{quote(subscription_id)}")


@router.post("/subscriptions/{subscription_id}/cancel")
async def cancel(request: Request, subscription_id: str, csrf: str = Form(""), when: str = Form("period_end"),
                 reason: str = Form(""), session: ConsoleSession = Depends(console_session)) -> Response:
    require_csrf(request, session, csrf)
    if when not in ("period_end", "now"):
        raise ConsoleError(422, "Invalid input", "when: now or period_end", "validation")
    container = container_of(request)
    body = _body(subscription_routes.CancelRequest, at_period_end=when == "period_end",
                 reason=reason.strip() or None)
    answer = await subscription_routes.cancel(subscription_id, body, request, principal_of(session), container,
                                              unit_of_work(container))
    return _done(f"/subscriptions/{quote(subscription_id)}", "cancelled", answer.status_code)


@router.get("/customers/{customer_id}/top-up")
async def confirm_top_up(request: Request, customer_id: str,
                         session: ConsoleSession = Depends(console_session)) -> Response:
    return page(request, "confirm.html", session, title=f"Top up the credit balance of {customer_id}",
                explain="Credits the customer's balance by hand (an adjustment entry in the audit trail); the "
                        "next invoices in that currency draw from it at finalisation.",
                action=f"{PREFIX}/customers/{quote(customer_id)}/top-up", button="Credit the balance",
                fields=[{"name": "amount", "label": "Amount", "required": True},
                        {"name": "currency", "label": "Currency", "value": "USD", "required": True},
                        {"name": "description", "label": "Description", "value": "Top-up by the operator",
                         "required": True}],
                back=f"{PREFIX}/customers/{quote(customer_id)}")


@router.post("/customers/{customer_id}/top-up")
async def top_up(request: Request, customer_id: str, csrf: str = Form(""), amount: str = Form(""),
                 currency: str = Form(""), description: str = Form(""), idem: str = Form(""),
                 session: ConsoleSession = Depends(console_session)) -> Response:
    require_csrf(request, session, csrf)
    code = currency.strip().upper()
    try:
        minor_units(code)
    except (KeyError, ValueError) as exc:
        raise ConsoleError(422, "Invalid currency", f"{currency!r} is not a currency", "validation") from exc
    body = _body(invoice_routes.AdjustmentRequest, currency=code, amount_minor=minor_amount(amount, code),
                 description=description.strip())
    if body.amount_minor <= 0:
        raise ConsoleError(422, "Invalid amount", "a top-up credits a positive amount", "validation")
    # the form's one-time key makes a second submission of the same form (a double click) write one entry
    await invoice_routes.adjust_balance(customer_id, body, request, f"console-{idem}" if idem else None,
                                        principal_of(session), container_of(request))
    return _done(f"/customers/{quote(customer_id)}", "topped_up", 201)


@router.get("/clock")
async def clock_page(request: Request, session: ConsoleSession = Depends(console_session)) -> Response:
    container = container_of(request)
    now = await run_in_threadpool(container.clock.now)
    return page(request, "clock.html", session, now=now, kind=container.settings.clock)


@router.get("/clock/advance")
async def confirm_advance(request: Request, days: int = 0, hours: int = 0,
                          session: ConsoleSession = Depends(console_session)) -> Response:
    body = _body(clock_routes.AdvanceRequest, days=days, hours=hours)
    now = await run_in_threadpool(container_of(request).clock.now)
    return page(request, "confirm.html", session, title="Advance the billing clock?",
                explain=f"From {now:%Y-%m-%d %H:%M} to {now + body.delta:%Y-%m-%d %H:%M} UTC. Whatever falls due in "
                        "between (period closes, trial ends, dunning retries and notices) takes effect in billing-"
                        "time order. The clock never goes back.",
                action=f"{PREFIX}/clock/advance", button="Advance the clock",
                hidden={"days": days, "hours": hours}, back=f"{PREFIX}/clock")


@router.post("/clock/advance")
async def advance_clock(request: Request, csrf: str = Form(""), days: int = Form(0), hours: int = Form(0),
                        session: ConsoleSession = Depends(console_session)) -> Response:
    require_csrf(request, session, csrf)
    body = _body(clock_routes.AdvanceRequest, days=days, hours=hours)
    await clock_routes.advance(body, request, principal_of(session), container_of(request))
    return _done("/clock", "clock_advanced", 200)

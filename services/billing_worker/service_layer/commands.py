"""Handlers of commands.v1 and payments.v1: load the aggregate, ask the domain, save, announce, answer.

Every handler is thin: business rules (transitions, proration, rating, coupons, credits, invoices) live in
`shared.domain`; here we only move objects between PostgreSQL, the domain and the outbox. A handler runs
inside the batch transaction (see processor.py); everything it writes commits with the consumer offset.

Outcomes (for the edge): a command the domain refuses is stored `rejected` with a code derived from the
domain error (`InvalidTransitionError` -> `invalid_transition`) and nothing else is written; a command that
no longer applies (a period close for a period already closed, a replay) is stored `ignored`; otherwise
`applied`, with a snapshot of the subscription.

Writes are collected in a `BillingWork` (unit of work) and flushed set-based, so the same code closes one
period or ten thousand (`close_periods`, the batch entry point of a billing run).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from services.billing_worker.adapters import billing_repository as repo
from services.billing_worker.adapters.billing_repository import (
    AttemptToCreate,
    InvoiceToStore,
    LedgerState,
    SubscriptionState,
    event_uuid,
    invoice_id_for,
)
from services.billing_worker.service_layer.messagebus import (
    PRODUCER_NAME,
    HandlerContext,
    HandlerRegistry,
    MessageRejected,
    WorkerDeps,
    outbox_row,
)
from shared.adapters.postgres.schema.billing import payment_attempts
from shared.adapters.postgres.schema.core import command_outcomes, outbox
from shared.contracts import topics
from shared.contracts.envelope import Envelope, new_envelope
from shared.contracts.messages import (
    CancelSubscription,
    ChangePlan,
    ChangeSeats,
    ClosePeriod,
    CreateSubscription,
    CreditsChanged,
    CustomerDeleted,
    EndTrial,
    ExpireCredits,
    GiveUpDunning,
    GrantCredits,
    InvoiceEvent,
    PauseSubscription,
    Payload,
    PaymentFailed,
    PaymentMethodRemoved,
    PaymentMethodUpdated,
    PaymentSucceeded,
    ResumeSubscription,
    RetryPayment,
    SubscriptionStatusChanged,
    UpdatePaymentMethod,
)
from shared.domain.calendar import BillingAnchor, Period, ensure_utc, zone
from shared.domain.catalog import Catalog, ChangeTiming, MeterId, Plan
from shared.domain.errors import DomainError, InvalidTransitionError
from shared.domain.events import DomainEvent, SubscriptionStarted, event_payload
from shared.domain.ids import CustomerId, SubscriptionId
from shared.domain.invoice import Invoice, InvoiceKey, InvoiceLine, InvoiceReason, InvoiceStatus, LineKind
from shared.domain.ledger import CreditLedger, GrantSource, MeterCredit
from shared.domain.money import Money
from shared.domain.rating import (
    IncludedCreditGrant,
    LateUsage,
    RatingResult,
    change_invoice,
    close_period,
    start_invoice,
    trial_credit_grants,
)
from shared.domain.subscription import Subscription, SubscriptionStatus

log = logging.getLogger("billing_worker.commands")

# close_usages(conn, [(subscription_id, period_start, period_end), ...]) -> {subscription_id: UsageClose}
CloseUsages = Callable[[sa.Connection, Sequence[tuple[str, datetime, datetime]]], Mapping[str, Any]]
Apply = Callable[["BillingWork", Envelope, Any, datetime], "dict[str, Any] | None"]
BatchHandler = Callable[[sa.Connection, Sequence[tuple[Envelope, Any]], datetime], None]

#: Message types that report a payment outcome (payments.v1): no command outcome is stored for them, and a
#: domain refusal dead-letters them.
PAYMENT_OUTCOMES = frozenset({"payment.succeeded", "payment.failed"})


class Refused(DomainError):
    """A command that cannot apply for a reason outside the aggregates (unknown subscription, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Ignored(Exception):
    """The command no longer applies (already done, stale): acknowledged, stored `ignored`."""


def error_code(error: BaseException) -> str:
    """A stable snake_case code for a domain refusal (`InvalidTransitionError` -> `invalid_transition`)."""
    if isinstance(error, Refused):
        return error.code
    name = type(error).__name__.removesuffix("Error")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _applied(work: BillingWork, sub_id: str, result: dict[str, Any] | None) -> dict[str, Any]:
    state = work.states.get(sub_id)
    return {**(_status_snapshot(state) if state else {}), **(result or {})}


def _status_snapshot(state: SubscriptionState) -> dict[str, Any]:
    sub = state.subscription
    return {"subscription_id": sub.id, "status": sub.status.value, "plan_id": sub.plan_id, "seats": sub.seats,
            "pending_plan_id": sub.pending_plan_id, "pending_seats": sub.pending_seats,
            "current_period_start": sub.current_period.start.isoformat(),
            "current_period_end": sub.current_period.end.isoformat(),
            "cancel_at_period_end": sub.cancel_at_period_end,
            "trial_end": sub.trial_end.isoformat() if sub.trial_end else None}


# --------------------------------------------------------------------------------------- unit of work


@dataclass
class _Issued:
    invoice: Invoice
    state: SubscriptionState
    plan_id: str
    command_id: str


@dataclass
class BillingWork:
    """What one batch of commands changes, flushed in a few set-based statements."""

    conn: sa.Connection
    catalog: Catalog
    credit_kinds: dict[str, bool]
    now: datetime
    states: dict[str, SubscriptionState] = field(default_factory=dict)
    touched: dict[str, SubscriptionState] = field(default_factory=dict)
    ledgers: dict[str, LedgerState] = field(default_factory=dict)
    issued: list[_Issued] = field(default_factory=list)
    invoice_of_key: dict[str, str] = field(default_factory=dict)
    attempts: list[AttemptToCreate] = field(default_factory=list)
    redemptions: list[tuple[Any, str, str, datetime]] = field(default_factory=list)
    periods: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)
    outbox_rows: list[dict[str, Any]] = field(default_factory=list)
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    settled_grants: list[tuple[str, datetime]] = field(default_factory=list)
    usage_closes: dict[str, Any] = field(default_factory=dict)  # prefetched for a billing run, by subscription
    invoices: dict[str, tuple[Invoice, Any]] = field(default_factory=dict)  # loaded, by invoice id
    paid_refs: dict[str, str | None] = field(default_factory=dict)  # provider refs of invoices paid in this work

    # --- loading

    def load(self, ids: Sequence[str]) -> None:
        missing = [i for i in ids if i not in self.states]
        self.states.update(repo.load_subscriptions(self.conn, missing))

    def state(self, subscription_id: str) -> SubscriptionState:
        self.load([subscription_id])
        state = self.states.get(subscription_id)
        if state is None:
            raise Refused("not_found", f"subscription {subscription_id} does not exist")
        return state

    def ledger(self, state: SubscriptionState) -> LedgerState:
        if state.id not in self.ledgers:
            if state.stored_version is None:
                self.ledgers[state.id] = _empty_ledger(state, self.credit_kinds)
            else:
                self.ledgers.update(repo.load_ledgers(self.conn, [state], self.credit_kinds))
        return self.ledgers[state.id]

    def invoice(self, invoice_id: str) -> tuple[Invoice, Any] | None:
        """The invoice and its stored row (loaded once per unit of work; the domain object is the live one)."""
        if invoice_id not in self.invoices:
            self.invoices.update(repo.load_invoices(self.conn, [invoice_id]))
        return self.invoices.get(invoice_id)

    def load_ledgers(self, states: Sequence[SubscriptionState]) -> None:
        wanted = [s for s in states if s.id not in self.ledgers and s.stored_version is not None]
        self.ledgers.update(repo.load_ledgers(self.conn, wanted, self.credit_kinds))

    # --- recording

    def touch(self, state: SubscriptionState) -> None:
        self.states[state.id] = state
        self.touched[state.id] = state

    def emit(self, type_: str, payload: Payload, *, key: str, event_id: Any, at: datetime,
             correlation: Envelope | None, topic: str = topics.BILLING_EVENTS) -> None:
        envelope = new_envelope(type_, payload.model_dump(mode="json"), producer=PRODUCER_NAME, occurred_at=at,
                                correlation_id=str(correlation.event_id) if correlation else None,
                                event_id=event_id)
        self.outbox_rows.append(outbox_row(envelope, key=key, topic=topic))

    def subscription_events(self, state: SubscriptionState, command: Envelope | None) -> None:
        """History rows and status-change events for what the aggregate recorded."""
        events = state.subscription.pull_events()
        command_id = str(command.event_id) if command else None
        self.history.extend(repo.history_rows(events, command_id))
        for event in events:
            change = _status_change(event)
            if change is None:
                continue
            old, new, reason = change
            self.emit("subscription.status_changed",
                      SubscriptionStatusChanged(subscription_id=state.id, customer_id=state.subscription.customer_id,
                                                old_status=old, new_status=new, plan_id=state.subscription.plan_id,
                                                reason=reason),
                      key=state.id, event_id=event_uuid(state.id, "status", event.version, new),
                      at=event.occurred_at, correlation=command)
        self.touch(state)

    def issue(self, invoice: Invoice, state: SubscriptionState, plan_id: str, command: Envelope) -> None:
        """Queue a draft for finalisation (numbered at flush, in one counter update for the batch)."""
        self.issued.append(_Issued(invoice, state, plan_id, str(command.event_id)))
        self.invoice_of_key[str(invoice.key)] = invoice.id

    def rating(self, result: RatingResult, state: SubscriptionState, plan_id: str, command: Envelope,
               at: datetime) -> None:
        self.issue(result.invoice, state, plan_id, command)
        self.grant_included(result.grants, state, command, at)
        if result.coupon_redemption is not None:
            self.redemptions.append((result.coupon_redemption, state.id, result.invoice.id, at))

    def grant_included(self, grants: Sequence[IncludedCreditGrant], state: SubscriptionState, command: Envelope,
                       at: datetime) -> None:
        """Write the domain's included-credit grants (period, trial, upgrade) to the ledger and announce them."""
        if not grants:
            return
        ledger = self.ledger(state).ledger
        for grant in grants:
            ledger.grant(grant_id=f"incl|{grant.key}", meter=grant.meter_id, amount=grant.amount,
                         source=GrantSource(grant.source), effective_at=grant.effective_at,
                         expires_at=grant.expires_at)
            self.emit("credits.granted", _credits_payload(state, grant.meter_id, grant.amount, grant.source,
                                                          grant.expires_at),
                      key=state.id, event_id=event_uuid(state.id, "credits.granted", grant.key), at=at,
                      correlation=command)
        self.touch(state)

    def expire_credits(self, state: SubscriptionState, at: datetime, command: Envelope) -> int:
        """Write off what is left of the grants that expired by `at` (the ledger decides) and announce it."""
        expired = self.ledger(state).ledger.expire(at)
        for entry in expired:
            self.emit("credits.expired", _credits_payload(state, entry.meter, entry.amount, None, entry.at),
                      key=state.id, event_id=event_uuid(entry.entry_id), at=entry.at, correlation=command)
        self.settled_grants.append((state.id, at))
        return len(expired)

    def outcome(self, command: Envelope, subscription_id: str, status: str, *, code: str | None = None,
                detail: str | None = None, result: dict[str, Any] | None = None) -> None:
        self.outcomes.append({"command_id": command.event_id, "subscription_id": subscription_id,
                              "command_type": command.type, "status": status, "error_code": code,
                              "error_detail": detail[:1000] if detail else None, "result": result})

    # --- flushing

    def flush(self) -> None:
        conn = self.conn
        self._finalise()
        repo.save_subscriptions(conn, list(self.touched.values()))
        customer_of = {sid: s.subscription.customer_id for sid, s in self.states.items()}
        grants, entries = repo.ledger_rows(self.ledgers, customer_of, self.now, self.invoice_of_key)
        repo.save_ledger_rows(conn, grants, entries, self.settled_grants)
        repo.insert_redemptions(conn, self.redemptions)
        repo.insert_payment_attempts(conn, self.attempts)
        repo.record_periods(conn, self.periods)
        repo.append_history(conn, self.history)
        repo.append_audit(conn, self.audit)
        repo.bulk_insert(conn, outbox, self.outbox_rows, ignore_conflicts_on=["event_id"])
        repo.bulk_insert(conn, command_outcomes, self.outcomes, ignore_conflicts_on=["command_id"])

    def _finalise(self) -> None:
        if not self.issued:
            return
        numbers = repo.allocate_invoice_numbers(self.conn, len(self.issued))
        to_store: list[InvoiceToStore] = []
        for item, number in zip(self.issued, numbers, strict=True):
            invoice, state = item.invoice, item.state
            at = invoice.created_at
            invoice.finalize(number=number, at=at)
            to_store.append(InvoiceToStore(invoice, item.plan_id, state.payment_method_id))
            carried = invoice.credit_to_carry_forward
            if carried.is_positive():
                state.carried_credit_minor += carried.amount_minor
                self.touch(state)
            self._invoice_events(invoice, state, at)
            if invoice.status is InvoiceStatus.OPEN and invoice.amount_due.is_positive():
                self.attempts.append(AttemptToCreate(
                    invoice_id=invoice.id, attempt_no=1, subscription_id=state.id,
                    customer_id=state.subscription.customer_id, amount=invoice.amount_due,
                    payment_method_id=state.payment_method_id, requested_at=at))
            self.audit.append({"occurred_at": at, "actor": PRODUCER_NAME, "action": "invoice.finalized",
                               "entity_type": "invoice", "entity_id": invoice.id, "subscription_id": state.id,
                               "customer_id": state.subscription.customer_id, "command_id": item.command_id,
                               "detail": {"number": number, "total_minor": invoice.total.amount_minor,
                                          "currency": invoice.currency, "reason": invoice.key.reason.value}})
        inserted = repo.insert_invoices(self.conn, to_store)
        if len(inserted) != len(to_store):
            duplicates = sorted({i.invoice.id for i in to_store} - inserted)
            # NOTE: an invoice identity that already exists means this close or change was applied before
            # while the subscription says otherwise: refuse the batch rather than bill twice.
            raise MessageRejected(f"invoices already exist for {duplicates[:5]}", code="duplicate_invoice")

    def _invoice_events(self, invoice: Invoice, state: SubscriptionState, at: datetime) -> None:
        for event in invoice.pull_events():
            type_ = {"InvoiceFinalized": "invoice.finalized", "InvoicePaid": "invoice.paid"}.get(event.name)
            if type_ is None:
                continue
            self.emit(type_, invoice_event(invoice, state), key=state.id,
                      event_id=event_uuid(invoice.id, type_), at=at, correlation=None)


def _empty_ledger(state: SubscriptionState, kinds: dict[str, bool]) -> LedgerState:
    meters = [MeterCredit(m, None if units else state.currency) for m, units in kinds.items()]
    return LedgerState(CreditLedger.open(state.id, meters, state.timezone), 0)


def _status_change(event: DomainEvent) -> tuple[str | None, str, str] | None:
    if isinstance(event, SubscriptionStarted):
        return None, event.status, "subscription_started"
    payload = event_payload(event)
    old, new = payload.get("from_status"), payload.get("to_status")
    if isinstance(new, str) and old != new:
        reason = payload.get("reason")
        return (str(old) if old is not None else None, new,
                str(reason) if isinstance(reason, str) else _snake(event.name))
    return None


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def invoice_event(invoice: Invoice, state: SubscriptionState, **extra: Any) -> InvoiceEvent:
    return InvoiceEvent(invoice_id=invoice.id, subscription_id=state.id, customer_id=state.subscription.customer_id,
                        number=invoice.number, status=invoice.status.value, total_minor=invoice.total.amount_minor,
                        currency=invoice.currency, period_start=invoice.period.start,
                        period_end=invoice.period.end, **extra)


def _credits_payload(state: SubscriptionState, meter_id: str, amount: Money | Decimal, source: str | None,
                     expires_at: datetime | None) -> CreditsChanged:
    if isinstance(amount, Money):
        return CreditsChanged(subscription_id=state.id, customer_id=state.subscription.customer_id,
                              meter_id=meter_id, amount_minor=abs(amount.amount_minor), currency=amount.currency,
                              source=source, expires_at=expires_at)
    return CreditsChanged(subscription_id=state.id, customer_id=state.subscription.customer_id, meter_id=meter_id,
                          units=abs(amount), source=source, expires_at=expires_at)


# ------------------------------------------------------------------------------------------- handlers


class BillingCommands:
    """One method per message type; `register` wires them into the worker's registry."""

    def __init__(self, catalog: Catalog, close_usages: CloseUsages) -> None:
        self.catalog = catalog
        self.credit_kinds = repo.credit_kinds(catalog)
        self._close_usages = close_usages
        self._prechecks: dict[Apply, Callable[[BillingWork, Any, datetime], None]] = {
            self.close: self._closable, self.end_trial: self._trial_endable}
        self._invoice_handlers: frozenset[Apply] = frozenset({
            self.payment_succeeded, self.payment_failed, self.retry_payment, self.give_up})

    def work(self, conn: sa.Connection, now: datetime) -> BillingWork:
        return BillingWork(conn, self.catalog, self.credit_kinds, now)

    # --- the adapter between the processor's per-message contract and the unit of work

    def handler(self, apply: Apply) -> Callable[[sa.Connection, Envelope, Any, HandlerContext], None]:
        def handle(conn: sa.Connection, envelope: Envelope, payload: Any, ctx: HandlerContext) -> None:
            self.run(conn, [(envelope, payload)], ctx.now, apply, is_command=envelope.type not in PAYMENT_OUTCOMES)
        return handle

    def batch_handler(self, apply: Apply, *, is_command: bool) -> BatchHandler:
        def handle(conn: sa.Connection, items: Sequence[tuple[Envelope, Any]], now: datetime) -> None:
            self.run(conn, items, now, apply, is_command=is_command)
        return handle

    def run(self, conn: sa.Connection, items: Sequence[tuple[Envelope, Any]], now: datetime, apply: Apply, *,
            is_command: bool = True) -> None:
        """Apply `items` in order through one unit of work, then flush it (one savepoint for all of them).

        A command that no longer applies or is refused before it changed anything (a close of a period that
        is not the current one, not due yet, ...) only gets its outcome. One refused or ignored midway
        rolls the savepoint back; then the items before it are applied together again, it alone (its
        outcome, nothing else), and the rest together: each item is applied at most twice, and the number
        of savepoints grows with the refusals, not with the items.
        """
        pending = self._unanswered(conn, items) if is_command else list(items)
        while pending:
            if len(pending) == 1:
                self._run_one(conn, *pending[0], now, apply, is_command=is_command)
                return
            refused = self._run_together(conn, pending, now, apply, is_command)
            if refused is None:
                return
            log.info("a batch item was refused or ignored midway; applying around it",
                     extra={"items": len(pending), "refused": refused})
            if refused:
                self.run(conn, pending[:refused], now, apply, is_command=is_command)
            self._run_one(conn, *pending[refused], now, apply, is_command=is_command)
            pending = pending[refused + 1:]

    @staticmethod
    def _unanswered(conn: sa.Connection, items: Sequence[tuple[Envelope, Any]]) -> list[tuple[Envelope, Any]]:
        """The commands not applied yet: a command whose outcome is stored was applied (or refused) before,
        e.g. the topic is read again from the start, or the scheduler re-emitted it; it is not applied twice."""
        answered = repo.answered_commands(conn, [envelope.event_id for envelope, _ in items])
        out, seen = [], set(answered)
        for envelope, payload in items:
            if envelope.event_id not in seen:
                seen.add(envelope.event_id)
                out.append((envelope, payload))
        if len(out) < len(items):
            log.info("commands already answered are not applied again", extra={"skipped": len(items) - len(out)})
        return out

    def _run_together(self, conn: sa.Connection, items: Sequence[tuple[Envelope, Any]], now: datetime,
                      apply: Apply, is_command: bool) -> int | None:
        """Apply and flush `items` under one savepoint; None when done, else the index of the item that was
        refused or ignored after it changed something (the savepoint is then rolled back)."""
        precheck = self._prechecks.get(apply) if is_command else None
        refused: int | None = None
        try:
            with conn.begin_nested():
                work = self.work(conn, now)
                work.load([str(p.subscription_id) for _, p in items])
                if apply == self.close:
                    work.load_ledgers(list(work.states.values()))
                    self._prefetch_usage(work, items, now)
                elif apply in self._invoice_handlers:
                    work.invoices.update(repo.load_invoices(conn, [str(p.invoice_id) for _, p in items]))
                for index, (envelope, payload) in enumerate(items):
                    sub_id = str(payload.subscription_id)
                    if precheck is not None:
                        try:
                            precheck(work, payload, now)
                        except Ignored as why:
                            work.outcome(envelope, sub_id, "ignored", detail=str(why))
                            continue
                        except DomainError as error:
                            work.outcome(envelope, sub_id, "rejected", code=error_code(error), detail=str(error))
                            continue
                    try:
                        result = apply(work, envelope, payload, now)
                    except (Ignored, DomainError):
                        refused = index
                        raise
                    if is_command:
                        work.outcome(envelope, sub_id, "applied", result=_applied(work, sub_id, result))
                work.flush()
        except (Ignored, DomainError):
            if refused is None:
                raise  # refused while flushing: not one item's doing (the processor isolates the culprit)
            return refused
        return None

    def _run_one(self, conn: sa.Connection, envelope: Envelope, payload: Any, now: datetime, apply: Apply, *,
                 is_command: bool) -> None:
        sub_id = str(payload.subscription_id)
        work = self.work(conn, now)
        try:
            with conn.begin_nested():
                if apply == self.close:
                    self._prefetch_usage(work, [(envelope, payload)], now)
                result = apply(work, envelope, payload, now)
                if is_command:
                    work.outcome(envelope, sub_id, "applied", result=_applied(work, sub_id, result))
                work.flush()
            return
        except Ignored as why:
            if not is_command:
                log.info("payment outcome ignored", extra={"subscription_id": sub_id, "reason": str(why)})
                return
            status, code, detail = "ignored", None, str(why)
        except DomainError as error:
            if not is_command:
                raise MessageRejected(f"{type(error).__name__}: {error}", code=error_code(error)) from error
            log.info("command rejected", extra={"subscription_id": sub_id, "type": envelope.type,
                                                "code": error_code(error), "reason": str(error)[:300]})
            status, code, detail = "rejected", error_code(error), str(error)
        answer = self.work(conn, now)
        answer.outcome(envelope, sub_id, status, code=code, detail=detail)
        answer.flush()

    # --- lifecycle

    def create(self, work: BillingWork, env: Envelope, p: CreateSubscription, now: datetime) -> dict[str, Any]:
        if p.subscription_id in work.states:
            raise Refused("already_exists", f"subscription {p.subscription_id} already exists")
        plan = self.catalog.plan(p.plan_id)
        if plan.currency != p.currency:
            raise Refused("currency_mismatch", f"plan {plan.id} is sold in {plan.currency}, not {p.currency}")
        at = ensure_utc(p.start_at or now)
        coupon = self.catalog.coupon(p.coupon_id) if p.coupon_id else None
        times = repo.coupon_times_redeemed(work.conn, coupon.id) if coupon else 0
        anchor = (BillingAnchor(day=p.anchor_day, time_of_day=time(0, 0), tz=p.timezone,
                                month=at.astimezone(zone(p.timezone)).month) if p.anchor_day else None)
        sub = Subscription.start(subscription_id=SubscriptionId(p.subscription_id),
                                 customer_id=CustomerId(p.customer_id), plan=plan, at=at, seats=p.seats,
                                 trial_days=p.trial_days, anchor=anchor, tz=p.timezone, coupon=coupon,
                                 coupon_times_redeemed=times)
        state = SubscriptionState(sub, p.currency, p.timezone, p.tax_rate_bps, p.payment_method_id)
        work.states[state.id] = state
        if coupon is not None:
            repo.attach_coupon(work.conn, coupon.id, state.id, at)
        work.periods.append(_period_row(sub))
        invoice_id = None
        if sub.status in (SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE):
            invoice_id = self._start_invoice(work, env, state, plan, coupon, at)
        work.grant_included(trial_credit_grants(subscription=sub, plan=plan), state, env, at)
        work.subscription_events(state, env)
        return {"invoice_id": invoice_id}

    def _start_invoice(self, work: BillingWork, env: Envelope, state: SubscriptionState, plan: Plan,
                       coupon: Any, at: datetime) -> str:
        sub = state.subscription
        if coupon is None and sub.coupon is not None:
            coupon = self.catalog.coupon(sub.coupon.coupon_id)
        key = InvoiceKey(sub.id, InvoiceReason.SUBSCRIPTION_START, sub.current_period)
        result = start_invoice(subscription=sub, plan=plan, coupon=coupon, tax_rate_bps=state.tax_rate_bps, at=at,
                               invoice_id=invoice_id_for(key))
        work.rating(result, state, plan.id, env, at)
        return result.invoice.id

    def change_plan(self, work: BillingWork, env: Envelope, p: ChangePlan, now: datetime) -> dict[str, Any]:
        state = work.state(p.subscription_id)
        sub = state.subscription
        change = sub.change_plan(new_plan=self.catalog.plan(p.plan_id), current_plan=self.catalog.plan(sub.plan_id),
                                 at=now, timing=None if p.timing == "auto" else ChangeTiming(p.timing))
        invoice_id = self._change_invoice(work, env, state, change.lines, change.invoice_period, now)
        work.grant_included(change.grants, state, env, now)
        work.subscription_events(state, env)
        return {"change": change.kind.value, "timing": change.timing.value, "invoice_id": invoice_id}

    def change_seats(self, work: BillingWork, env: Envelope, p: ChangeSeats, now: datetime) -> dict[str, Any]:
        state = work.state(p.subscription_id)
        sub = state.subscription
        change = sub.change_seats(seats=p.seats, plan=self.catalog.plan(sub.plan_id), at=now)
        invoice_id = self._change_invoice(work, env, state, change.lines, change.invoice_period, now)
        work.grant_included(change.grants, state, env, now)
        work.subscription_events(state, env)
        return {"change": change.kind.value, "timing": change.timing.value, "invoice_id": invoice_id}

    def _change_invoice(self, work: BillingWork, env: Envelope, state: SubscriptionState,
                        lines: Sequence[InvoiceLine], period: Period | None, at: datetime) -> str | None:
        if not lines or period is None:
            return None
        sub = state.subscription
        key = InvoiceKey(sub.id, InvoiceReason.SUBSCRIPTION_CHANGE, period)
        invoice = change_invoice(subscription=sub, lines=lines, invoice_period=period, currency=state.currency,
                                 tax_rate_bps=state.tax_rate_bps, at=at, invoice_id=invoice_id_for(key))
        work.issue(invoice, state, sub.plan_id, env)
        return invoice.id

    def cancel(self, work: BillingWork, env: Envelope, p: CancelSubscription, now: datetime) -> None:
        state = work.state(p.subscription_id)
        state.subscription.cancel(at=now, at_period_end=p.at_period_end, reason=p.reason or "requested")
        if not p.at_period_end:
            state.cancel_reason = p.reason or "requested"
        work.subscription_events(state, env)

    def pause(self, work: BillingWork, env: Envelope, p: PauseSubscription, now: datetime) -> None:
        state = work.state(p.subscription_id)
        state.subscription.pause(at=now)
        state.paused_at = now
        work.subscription_events(state, env)

    def resume(self, work: BillingWork, env: Envelope, p: ResumeSubscription, now: datetime) -> None:
        state = work.state(p.subscription_id)
        state.subscription.resume(at=now)
        state.paused_at = None
        work.subscription_events(state, env)

    def _trial_endable(self, work: BillingWork, p: EndTrial, now: datetime) -> None:
        sub = work.state(p.subscription_id).subscription
        if sub.status is not SubscriptionStatus.TRIALING or sub.trial_end != ensure_utc(p.trial_end):
            raise Ignored(f"trial ending {p.trial_end.isoformat()} is not the subscription's open trial")

    def end_trial(self, work: BillingWork, env: Envelope, p: EndTrial, now: datetime) -> dict[str, Any]:
        self._trial_endable(work, p, now)
        state = work.state(p.subscription_id)
        sub = state.subscription
        plan = self.catalog.plan(sub.plan_id)
        at = ensure_utc(p.trial_end)
        sub.end_trial(at=at, has_payment_method=state.payment_method_id is not None, plan=plan)
        invoice_id = None
        if sub.status in (SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE):
            work.periods.append(_period_row(sub))
            invoice_id = self._start_invoice(work, env, state, plan, None, at)
        work.subscription_events(state, env)
        return {"invoice_id": invoice_id}

    # --- period close (the billing run)

    def _closable(self, work: BillingWork, p: ClosePeriod, now: datetime) -> None:
        """Raise Ignored or Refused when this close does not apply (changes nothing)."""
        sub = work.state(p.subscription_id).subscription
        period_end = ensure_utc(p.period_end)
        if sub.status in (SubscriptionStatus.TRIALING, SubscriptionStatus.CANCELLED):
            raise Ignored(f"a {sub.status.value} subscription has no period to close")
        if sub.current_period.end != period_end:
            raise Ignored(f"period ending {period_end.isoformat()} is not the current one "
                          f"(ends {sub.current_period.end.isoformat()})")
        if now < period_end:
            raise Refused("not_due", f"period ends {period_end.isoformat()}, the billing clock says {now.isoformat()}")

    def _prefetch_usage(self, work: BillingWork, items: Sequence[tuple[Envelope, Any]], now: datetime) -> None:
        """Close the usage of every applicable period close of `items` in one set-based call."""
        wanted: dict[str, tuple[str, datetime, datetime]] = {}
        for _, p in items:
            if p.subscription_id in wanted:
                continue
            try:
                self._closable(work, p, now)
            except (Ignored, DomainError):
                continue
            period = work.states[p.subscription_id].subscription.current_period
            wanted[p.subscription_id] = (p.subscription_id, period.start, period.end)
        if wanted:
            work.usage_closes.update(self._close_usages(work.conn, list(wanted.values())))

    def close(self, work: BillingWork, env: Envelope, p: ClosePeriod, now: datetime) -> dict[str, Any]:
        self._closable(work, p, now)
        state = work.state(p.subscription_id)
        sub = state.subscription
        period_end = ensure_utc(p.period_end)
        closed = sub.current_period
        plan = self.catalog.plan(sub.plan_id)
        next_plan = self.catalog.plan(sub.pending_plan_id) if sub.pending_plan_id else None
        coupon = self.catalog.coupon(sub.coupon.coupon_id) if sub.coupon else None
        usage = work.usage_closes.pop(sub.id, None)
        if usage is None or usage.period_end != closed.end:
            usage = self._close_usages(work.conn, [(sub.id, closed.start, closed.end)])[sub.id]
        ledger = work.ledger(state)
        carried = ([InvoiceLine(kind=LineKind.ADJUSTMENT, description="Credit carried forward",
                                amount=Money(-state.carried_credit_minor, state.currency))]
                   if state.carried_credit_minor else [])
        key = InvoiceKey(sub.id, InvoiceReason.PERIOD_CLOSE, closed)
        # NOTE: the billing instant of a close is the period end itself, so a close applied late (worker
        # down, backlog) rates exactly like one applied on time.
        result = close_period(
            subscription=sub, plan=plan, usage_totals_by_meter=_meter_totals(usage.totals),
            credits=ledger.ledger, coupon=coupon, tax_rate_bps=state.tax_rate_bps, at=period_end,
            invoice_id=invoice_id_for(key), next_plan=next_plan, pending_proration_lines=carried,
            late_usage=_late_usage(usage.late))
        state.carried_credit_minor = 0
        work.rating(result, state, plan.id, env, period_end)
        # The closed period's included credits expire with it (a ledger rule); settle them now rather than
        # through a separate credits.expire command per subscription.
        work.expire_credits(state, period_end, env)
        work.periods.append({"subscription_id": sub.id, "period_start": closed.start, "period_end": closed.end,
                             "plan_id": plan.id, "seats": sub.seats, "invoice_id": result.invoice.id,
                             "closed_at": period_end})
        if result.next_period is not None:
            work.periods.append(_period_row(sub))
        work.subscription_events(state, env)
        return {"invoice_id": result.invoice.id}

    def close_periods(self, conn: sa.Connection, items: Sequence[tuple[Envelope, ClosePeriod]],
                      now: datetime) -> None:
        """The batch entry point of a billing run: many `period.close` commands in one unit of work.

        Loads every subscription and ledger of the batch in two queries, rates them one by one through the
        domain, and writes invoices, lines, grants, entries, attempts, events and outcomes set-based.
        """
        self.run(conn, items, now, self.close)

    # --- credits

    def expire_credits(self, work: BillingWork, env: Envelope, p: ExpireCredits, now: datetime) -> dict[str, Any]:
        state = work.state(p.subscription_id)
        return {"expired_entries": work.expire_credits(state, ensure_utc(p.at), env)}

    def grant_credits(self, work: BillingWork, env: Envelope, p: GrantCredits, now: datetime) -> dict[str, Any]:
        state = work.state(p.subscription_id)
        if (p.amount_minor is None) == (p.units is None):
            raise Refused("invalid_amount", "a grant needs exactly one of amount_minor or units")
        amount: Money | Decimal = (Money(p.amount_minor, p.currency or state.currency) if p.amount_minor is not None
                                   else Decimal(p.units or 0))
        ledger = work.ledger(state).ledger
        ledger.grant(grant_id=f"{state.id}|{p.grant_id}", meter=p.meter_id, amount=amount,
                     source=GrantSource(p.source), effective_at=now, expires_at=p.expires_at,
                     priority=p.priority if "priority" in p.model_fields_set else None)
        work.emit("credits.granted", _credits_payload(state, p.meter_id, amount, p.source, p.expires_at),
                  key=state.id, event_id=event_uuid(state.id, "credits.granted", p.grant_id), at=now,
                  correlation=env)
        work.touch(state)
        return {"grant_id": p.grant_id}

    # --- payments

    def update_payment_method(self, work: BillingWork, env: Envelope, p: UpdatePaymentMethod,
                              now: datetime) -> None:
        state = work.state(p.subscription_id)
        state.payment_method_id = p.payment_method_id
        work.emit("payment_method.updated", PaymentMethodUpdated(
            subscription_id=state.id, customer_id=state.subscription.customer_id,
            payment_method_id=p.payment_method_id), key=state.id, event_id=event_uuid(env.event_id, "pm"),
            at=now, correlation=env)
        work.touch(state)

    def customer_deleted(self, work: BillingWork, env: Envelope, p: CustomerDeleted, now: datetime) -> dict[str, Any]:
        """The provider deleted the customer, and its saved payment methods with it: forget the subscription's
        method, so its next charge fails with `payment_method_missing` and dunning asks for a new card."""
        state = work.state(p.subscription_id)
        if state.subscription.customer_id != p.customer_id:
            raise Refused("customer_mismatch", f"subscription {state.id} belongs to {state.subscription.customer_id}, "
                                               f"not {p.customer_id}")
        previous = state.payment_method_id
        if previous is None:
            raise Ignored(f"subscription {state.id} has no payment method on file")
        state.payment_method_id = None
        # Charges not dispatched yet would use the deleted method: they fail as missing a method instead.
        # (Attempts already in flight or unknown keep theirs: they are reconciled, never re-sent blindly.)
        detached = repo.detach_pending_payment_method(work.conn, state.id)
        work.audit.append({"occurred_at": now, "actor": PRODUCER_NAME, "action": "payment_method.removed",
                           "entity_type": "subscription", "entity_id": state.id, "subscription_id": state.id,
                           "customer_id": state.subscription.customer_id, "command_id": str(env.event_id),
                           "detail": {"reason": "customer_deleted", "payment_method_id": previous,
                                      "stripe_customer_id": p.stripe_customer_id,
                                      "deleted_at": ensure_utc(p.deleted_at).isoformat(),
                                      "pending_attempts_detached": detached}})
        work.emit("payment_method.removed", PaymentMethodRemoved(
            subscription_id=state.id, customer_id=state.subscription.customer_id,
            previous_payment_method_id=previous, reason="customer_deleted"),
            key=state.id, event_id=event_uuid(env.event_id, "pm_removed"), at=now, correlation=env)
        work.touch(state)
        return {"previous_payment_method_id": previous, "pending_attempts_detached": detached}

    def retry_payment(self, work: BillingWork, env: Envelope, p: RetryPayment, now: datetime) -> dict[str, Any]:
        state = work.state(p.subscription_id)
        found = work.invoice(p.invoice_id)
        if found is None:
            raise Refused("not_found", f"invoice {p.invoice_id} does not exist")
        invoice, row = found
        if invoice.status not in (InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE):
            raise Ignored(f"invoice {invoice.id} is {invoice.status.value}: nothing to collect")
        due = invoice.amount_due.amount_minor - row.amount_paid_minor
        if due <= 0:
            raise Ignored(f"invoice {invoice.id} has nothing left to collect")
        work.attempts.append(AttemptToCreate(
            invoice_id=invoice.id, attempt_no=p.attempt_no, subscription_id=state.id,
            customer_id=state.subscription.customer_id, amount=Money(due, invoice.currency),
            payment_method_id=state.payment_method_id, requested_at=now, reason=p.reason))
        return {"invoice_id": invoice.id, "attempt_no": p.attempt_no}

    def give_up(self, work: BillingWork, env: Envelope, p: GiveUpDunning, now: datetime) -> dict[str, Any]:
        state = work.state(p.subscription_id)
        found = work.invoice(p.invoice_id)
        if found is None:
            raise Refused("not_found", f"invoice {p.invoice_id} does not exist")
        invoice, _ = found
        if invoice.status is not InvoiceStatus.OPEN:
            raise Ignored(f"invoice {invoice.id} is {invoice.status.value}")
        invoice.mark_uncollectible(at=now, reason="dunning_gave_up")
        invoice.pull_events()
        repo.save_invoice_status(work.conn, invoice, at=now)
        work.conn.execute(sa.update(payment_attempts).where(payment_attempts.c.invoice_id == invoice.id,
                                                            payment_attempts.c.status == "pending")
                          .values(status="cancelled", completed_at=now))
        work.emit("invoice.uncollectible", invoice_event(invoice, state), key=state.id,
                  event_id=event_uuid(invoice.id, "invoice.uncollectible"), at=now, correlation=env)
        if state.subscription.status is not SubscriptionStatus.CANCELLED:
            state.subscription.cancel(at=now, reason="dunning_gave_up")
            state.cancel_reason = "dunning_gave_up"
        work.subscription_events(state, env)
        return {"invoice_id": invoice.id}

    def payment_succeeded(self, work: BillingWork, env: Envelope, p: PaymentSucceeded, now: datetime) -> None:
        state = work.state(p.subscription_id)
        found = work.invoice(p.invoice_id)
        if found is None:
            raise MessageRejected(f"payment for unknown invoice {p.invoice_id}", code="unknown_invoice")
        invoice, row = found
        if p.attempt_id:
            self._settle_attempt(work.conn, p.attempt_id, "succeeded", p.provider_ref, None, False, now)
        if invoice.status is InvoiceStatus.PAID:
            paid_ref = work.paid_refs.get(invoice.id, row.provider_ref)
            if p.provider_ref and paid_ref and p.provider_ref != paid_ref:
                # NOTE: a second successful charge of one invoice must never be silent: it is audited
                # for a refund (the constraints make it impossible through our own executor).
                work.audit.append({"occurred_at": now, "actor": PRODUCER_NAME, "action": "payment.duplicate",
                                   "entity_type": "invoice", "entity_id": invoice.id, "subscription_id": state.id,
                                   "detail": {"provider_ref": p.provider_ref, "paid_ref": paid_ref}})
            raise Ignored(f"invoice {invoice.id} is already paid")
        if invoice.status not in (InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE):
            raise Ignored(f"invoice {invoice.id} is {invoice.status.value}")
        paid_at = ensure_utc(p.paid_at)
        invoice.mark_paid(at=paid_at, payment_reference=p.provider_ref)
        invoice.pull_events()
        repo.save_invoice_status(work.conn, invoice, provider_ref=p.provider_ref, at=paid_at)
        work.paid_refs[invoice.id] = p.provider_ref
        work.emit("invoice.paid", invoice_event(invoice, state), key=state.id,
                  event_id=event_uuid(invoice.id, "invoice.paid"), at=paid_at, correlation=env)
        sub = state.subscription
        if sub.status is SubscriptionStatus.PAST_DUE and not [
                i for i in repo.open_invoices_of(work.conn, sub.id) if i != invoice.id]:
            sub.reactivate(at=paid_at)
        work.subscription_events(state, env)

    def payment_failed(self, work: BillingWork, env: Envelope, p: PaymentFailed, now: datetime) -> None:
        state = work.state(p.subscription_id)
        found = work.invoice(p.invoice_id)
        if found is None:
            raise MessageRejected(f"payment failure for unknown invoice {p.invoice_id}", code="unknown_invoice")
        invoice, _ = found
        if p.attempt_id and not self._settle_attempt(work.conn, p.attempt_id, "declined", p.provider_ref,
                                                     p.decline_code, p.hard_decline, now):
            if p.source == "reconciliation":
                raise Ignored(f"attempt {p.attempt_id} was already settled")
        if invoice.status is not InvoiceStatus.OPEN:
            raise Ignored(f"invoice {invoice.id} is {invoice.status.value}")
        failed_at = ensure_utc(p.failed_at)
        attempt_no = _attempt_no(work.conn, p.attempt_id)
        repo.record_failed_attempt(work.conn, invoice.id, p.decline_code)
        work.emit("invoice.payment_failed", invoice_event(
            invoice, state, decline_code=p.decline_code, hard_decline=p.hard_decline, attempt_no=attempt_no),
            key=state.id, event_id=event_uuid(invoice.id, "invoice.payment_failed", p.attempt_id or env.event_id),
            at=failed_at, correlation=env)
        sub = state.subscription
        if sub.status in (SubscriptionStatus.ACTIVE, SubscriptionStatus.TRIALING):
            sub.mark_past_due(at=failed_at, reason="payment_failed")
        work.subscription_events(state, env)

    @staticmethod
    def _settle_attempt(conn: sa.Connection, attempt_id: str, status: str, provider_ref: str | None,
                        decline_code: str | None, hard: bool, at: datetime) -> bool:
        """Record an outcome reported by someone else (webhook, reconciliation) on a still open attempt."""
        a = payment_attempts.c
        condition: sa.ColumnElement[bool] = a.status.in_(("pending", "in_flight", "unknown"))
        if status == "succeeded":
            others = sa.select(payment_attempts.c.attempt_id).where(
                a.invoice_id == sa.select(a.invoice_id).where(a.attempt_id == attempt_id).scalar_subquery(),
                a.status == "succeeded")
            condition = sa.and_(sa.or_(condition, a.status == "declined"), ~sa.exists(others))
        done = conn.execute(sa.update(payment_attempts).where(a.attempt_id == attempt_id, condition).values(
            status=status, provider_ref=sa.func.coalesce(provider_ref, a.provider_ref), decline_code=decline_code,
            hard_decline=hard, completed_at=at))
        return bool(done.rowcount)

    # --- registration table

    def table(self) -> dict[str, Apply]:
        return {
            "subscription.create": self.create,
            "subscription.change_plan": self.change_plan,
            "subscription.change_seats": self.change_seats,
            "subscription.cancel": self.cancel,
            "subscription.pause": self.pause,
            "subscription.resume": self.resume,
            "period.close": self.close,
            "trial.end": self.end_trial,
            "credits.expire": self.expire_credits,
            "credits.grant": self.grant_credits,
            "payment.retry": self.retry_payment,
            "payment_method.update": self.update_payment_method,
            "payment.customer_deleted": self.customer_deleted,
            "dunning.give_up": self.give_up,
            "payment.succeeded": self.payment_succeeded,
            "payment.failed": self.payment_failed,
        }


def _attempt_no(conn: sa.Connection, attempt_id: str | None) -> int | None:
    if attempt_id is None:
        return None
    value = conn.execute(sa.select(payment_attempts.c.attempt_no)
                         .where(payment_attempts.c.attempt_id == attempt_id)).scalar_one_or_none()
    return int(value) if value is not None else None


def _period_row(sub: Subscription) -> dict[str, Any]:
    return {"subscription_id": sub.id, "period_start": sub.current_period.start,
            "period_end": sub.current_period.end, "plan_id": sub.plan_id, "seats": sub.seats}


def _meter_totals(totals: Any) -> dict[MeterId, Decimal]:
    return {MeterId(m): Decimal(q) for m, q in totals.items()}


def _late_usage(late: Sequence[Any]) -> list[LateUsage]:
    """Late usage grouped per meter, over the span of hours it came from."""
    spans: dict[str, tuple[datetime, datetime, Decimal]] = {}
    for item in late:
        start = item.bucket_start
        lo, hi, q = spans.get(item.meter_id, (start, start, Decimal(0)))
        spans[item.meter_id] = (min(lo, start), max(hi, start), q + Decimal(item.quantity))
    return [LateUsage(MeterId(m), Period(lo, hi + timedelta(hours=1)), q)
            for m, (lo, hi, q) in sorted(spans.items()) if q]


# ------------------------------------------------------------------------------------------- wiring


def register(registry: HandlerRegistry, deps: WorkerDeps) -> None:
    """Wire every command and payment handler, the payment executor and the scheduler into the worker."""
    from services.billing_worker.adapters.usage import close_usages
    from services.billing_worker.entrypoints.executor import PaymentExecutor
    from services.billing_worker.entrypoints.scheduler import Scheduler
    from shared.adapters.payments import make_gateway

    commands = BillingCommands(deps.catalog, close_usages)
    register_batch = getattr(registry, "register_batch", None)
    for message_type, apply in commands.table().items():
        registry.register(message_type, commands.handler(apply))
        if callable(register_batch):
            # A run of consecutive messages of one type goes through one unit of work (a billing run's
            # thousands of period closes: a few statements in all).
            register_batch(message_type, commands.batch_handler(apply,
                                                                is_command=message_type not in PAYMENT_OUTCOMES))
    registry.add_background(PaymentExecutor(deps.engine, make_gateway(deps.settings, deps.engine), deps.clock))
    registry.add_background(Scheduler(deps.settings, deps.engine, deps.clock))


__all__ = ["BillingCommands", "BillingWork", "Ignored", "InvalidTransitionError", "Refused", "error_code",
           "register"]

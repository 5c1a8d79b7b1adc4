"""The billing worker's unit of work: what one run of messages reads and changes, written at `commit()`.

`BillingUnitOfWork` is the port the handlers see. It tracks the aggregates a run loaded (subscriptions with
their billing snapshot, credit ledgers, invoices) and collects every change (subscriptions touched, invoices to
finalise, payment attempts, coupon redemptions, periods, history, audit, outbox events, command outcomes);
`commit()` finalises the issued invoices (numbered in one counter update for the run) and hands everything to
the adapter, which writes it set-based: the same code closes one period or ten thousand.

It works inside a transaction its caller owns (the consumer's batch transaction): `commit()` writes, it never
commits PostgreSQL; `savepoint()` brackets a part that may have to be rolled back. The adapter over PostgreSQL
is `services.billing_worker.adapters.sql_unit_of_work`; unit tests use `tests/unit/worker/fakes.py`.

A few writes are immediate rather than collected (invoice status, payment attempt updates, coupon attachment):
they are the adapter's methods below, called by the use cases where today's order of effects needs them.
"""

from __future__ import annotations

import abc
import uuid
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

from services.billing_worker.service_layer.announcements import (
    credits_payload,
    invoice_event,
    status_change,
    status_snapshot,
)
from services.billing_worker.service_layer.errors import MessageRejected, Refused
from services.billing_worker.service_layer.model import InvoiceToStore, LedgerState, SubscriptionState, credit_kinds
from shared.contracts import topics
from shared.contracts.envelope import Envelope
from shared.contracts.messages import Payload, SubscriptionStatusChanged
from shared.domain.catalog import Catalog
from shared.domain.coupons import CouponRedemption
from shared.domain.credit_note import CreditNote, EarlierNote
from shared.domain.credit_purchase import AutoRecharge, CreditPurchase, PurchaseStatus
from shared.domain.customer_balance import BalanceEntry, BalanceEntryKind, balance_after, balance_entry_id
from shared.domain.events import DomainEvent
from shared.domain.ids import attempt_id_for, event_uuid
from shared.domain.invoice import Invoice, InvoiceReason, InvoiceStatus
from shared.domain.ledger import CreditLedger, MeterCredit
from shared.domain.payment_attempt import PaymentAttempt
from shared.domain.rating import GraceUsage, IncludedCreditGrant, RatingResult

PRODUCER_NAME = "billing-worker"


class UsageClose(Protocol):
    """What closing a period's usage answers (services.billing_worker.adapters.usage_close.UsageClose)."""

    @property
    def period_end(self) -> datetime: ...

    @property
    def totals(self) -> Mapping[str, Any]: ...  # meter id -> quantity

    @property
    def late(self) -> Sequence[Any]: ...  # items with bucket_start, meter_id, quantity


@dataclass(frozen=True, slots=True)
class Outgoing:
    """An event for the outbox: written in the same transaction as the state it announces."""

    envelope: Envelope
    key: str
    topic: str


@dataclass
class IssuedInvoice:
    """A draft waiting for its number: finalised at commit, in one counter update for the run."""

    invoice: Invoice
    state: SubscriptionState
    plan_id: str
    command_id: str
    at: datetime | None = None  # the finalisation instant; None: the invoice's own (created_at)
    stored_draft: bool = False  # a draft stored earlier (grace): its row is updated, not inserted


class BillingUnitOfWork(abc.ABC):
    """What one run of messages changes (see the module docstring). Call `begin(at)` to start a run (it
    forgets what the previous one loaded and collected), then the use cases, then `commit()`."""

    def __init__(self, catalog: Catalog, kinds: Mapping[str, bool] | None = None) -> None:
        """`kinds`: `credit_kinds(catalog)` computed once by the caller (a unit of work is made per batch)."""
        self.catalog = catalog
        self.credit_kinds = dict(kinds) if kinds is not None else credit_kinds(catalog)
        self.begin(datetime.min.replace(tzinfo=UTC))  # nothing loaded or collected yet

    def begin(self, at: datetime) -> None:
        self.now = at
        self.states: dict[str, SubscriptionState] = {}
        self.touched: dict[str, SubscriptionState] = {}
        self.ledgers: dict[str, LedgerState] = {}
        self.issued: list[IssuedInvoice] = []
        self.drafts: list[tuple[IssuedInvoice, datetime]] = []  # stored DRAFT until the instant given
        self.invoice_of_key: dict[str, str] = {}
        self.attempts: list[PaymentAttempt] = []
        self.redemptions: list[tuple[CouponRedemption, str, str, datetime]] = []
        self.periods: list[dict[str, Any]] = []
        self.history: list[tuple[list[DomainEvent], str | None]] = []
        self.audit: list[dict[str, Any]] = []
        self.outgoing: list[Outgoing] = []
        self.outcomes: list[dict[str, Any]] = []
        self.settled_grants: list[tuple[str, datetime]] = []
        self.usage_closes: dict[str, UsageClose] = {}  # prefetched for a billing run, by subscription
        self.invoices: dict[str, tuple[Invoice, Any]] = {}  # loaded, by invoice id (row: amount_paid_minor...)
        self.paid_refs: dict[str, str | None] = {}  # invoices paid in this run (mark_paid): their provider refs
        self._recharges_memo: dict[str, list[AutoRecharge]] = {}  # auto_recharges(), per run

    # --- the adapter's side: reads

    @abc.abstractmethod
    def savepoint(self) -> AbstractContextManager[Any]:
        """A nested transaction: what is written inside is undone if the block raises."""

    @abc.abstractmethod
    def _load_subscriptions(self, ids: Sequence[str]) -> dict[str, SubscriptionState]: ...

    @abc.abstractmethod
    def _load_ledgers(self, states: Sequence[SubscriptionState], *,
                      unsettled_only: bool = False) -> dict[str, LedgerState]:
        """The stored ledgers of `states`; with `unsettled_only` an adapter may leave out the grants already
        settled (expired and written off: they hold nothing) and their entries."""

    @abc.abstractmethod
    def _load_invoices(self, invoice_ids: Sequence[str]) -> dict[str, tuple[Invoice, Any]]: ...

    @abc.abstractmethod
    def answered_commands(self, command_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """The commands among `command_ids` whose outcome is already stored."""

    @abc.abstractmethod
    def close_usages(self, requests: Sequence[tuple[str, datetime, datetime]]) -> Mapping[str, UsageClose]:
        """Close the usage of (subscription_id, period_start, period_end) periods: what each bills, marked
        billed (so a replay bills nothing twice)."""

    @abc.abstractmethod
    def billed_usage(self, subscription_id: str, meter_ids: Sequence[str], period_start: datetime,
                     period_end: datetime) -> dict[str, Decimal]:
        """Units of each meter with a timestamp in [period_start, period_end) billed so far, this transaction's
        own marks included (the position late units of a tiered price start at, once the caller takes them off)."""

    @abc.abstractmethod
    def coupon_times_redeemed(self, coupon_id: str) -> int: ...

    @abc.abstractmethod
    def open_invoices_of(self, subscription_id: str) -> list[str]:
        """Ids of the subscription's invoices still to collect (open or uncollectible)."""

    # --- the adapter's side: immediate writes

    @abc.abstractmethod
    def attach_coupon(self, coupon_id: str, subscription_id: str, at: datetime) -> None: ...

    @abc.abstractmethod
    def save_invoice_status(self, invoice: Invoice, *, provider_ref: str | None = None,
                            at: datetime | None = None) -> None: ...

    @abc.abstractmethod
    def settle_attempt(self, attempt_id: str, status: str, provider_ref: str | None, decline_code: str | None,
                       hard: bool, at: datetime) -> bool:
        """Record an outcome reported by someone else (webhook, reconciliation) on a still open attempt;
        False when the attempt was settled already."""

    @abc.abstractmethod
    def attempt_no(self, attempt_id: str | None) -> int | None: ...

    @abc.abstractmethod
    def stored_attempts_of(self, invoice_id: str) -> dict[int, str]:
        """The invoice's payment attempts as stored: attempt number -> status."""

    @abc.abstractmethod
    def record_failed_attempt(self, invoice_id: str, decline_code: str | None) -> None:
        """Count a failed charge on the invoice (attempt count, last decline code)."""

    @abc.abstractmethod
    def cancel_pending_attempts(self, invoice_id: str, at: datetime) -> None:
        """Cancel the invoice's attempts not dispatched yet."""

    @abc.abstractmethod
    def detach_pending_payment_method(self, subscription_id: str) -> int:
        """Drop the payment method of the subscription's attempts not dispatched yet; returns how many."""

    # --- credit notes (immediate writes: adapters/credit_notes.py)

    @abc.abstractmethod
    def earlier_credit_notes(self, invoice_id: str) -> list[EarlierNote]:
        """What the invoice's credit notes took so far (the limits of the next one)."""

    @abc.abstractmethod
    def store_credit_note(self, note: CreditNote, *, issuer: str, payment_ref: str | None) -> str:
        """Number `note` from the issuer's credit-note counter (gapless, in this transaction) and store it with
        its lines; a refunded part also writes its refund row (status pending), which the refund executor sends
        after the commit, like a charge. Returns the number."""

    @abc.abstractmethod
    def fee_line_of(self, subscription_id: str, period_start: datetime, period_end: datetime
                    ) -> tuple[str, int] | None:
        """(invoice id, line number) of the fee line that charged the subscription's period [start, end) on a
        finalised, not void invoice (the newest when several did), or None."""

    @abc.abstractmethod
    def save_invoice_credit(self, invoice: Invoice, at: datetime) -> int:
        """Store what credit notes took off the invoice while it was owed (and its status when that settled
        it); withdraws its attempts not dispatched yet (they ask for the old amount) and returns how many."""

    @abc.abstractmethod
    def lock_customer_balances(self, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """The balances of (customer_id, currency) pairs, locked until the batch transaction ends (taken in
        (customer_id, currency) order, so two workers never deadlock on it); 0 for a customer with none."""

    @abc.abstractmethod
    def _apply_balance_entry(self, entry: BalanceEntry) -> bool:
        """Append the entry and move its balance (immediate); False when the entry id was written before."""

    def _apply_balance_entries(self, entries: Sequence[BalanceEntry]) -> None:
        """`_apply_balance_entry` for many entries (a billing run's draws and credits); adapters write them
        set-based."""
        for entry in entries:
            self._apply_balance_entry(entry)

    @abc.abstractmethod
    def grace_usage(self, subscription_id: str, period_start: datetime, period_end: datetime) -> GraceUsage:
        """Usage of a draft's period [period_start, period_end) that arrived after its close and is not
        billed yet, marked billed (so the next close does not bill it as late usage again), with what the
        close billed. Nothing when a later close already ran (it took that usage as late usage)."""

    # --- prepaid credit purchases (immediate reads and writes: adapters/credit_purchases.py)

    @abc.abstractmethod
    def credit_purchase(self, purchase_id: str) -> CreditPurchase | None: ...

    @abc.abstractmethod
    def credit_purchase_of_invoice(self, invoice_id: str) -> CreditPurchase | None: ...

    @abc.abstractmethod
    def add_credit_purchase(self, purchase: CreditPurchase) -> bool:
        """Store a new purchase; False (nothing written) when its id exists or, for an auto-recharge, one is
        already pending for its subscription and meter (the partial unique index decides, under concurrency)."""

    @abc.abstractmethod
    def save_credit_purchase(self, purchase: CreditPurchase) -> None:
        """Store a purchase's new status (granted with its grant, or cancelled)."""

    @abc.abstractmethod
    def _load_auto_recharges(self, subscription_ids: Sequence[str]) -> dict[str, list[AutoRecharge]]:
        """The enabled auto-recharge settings of the subscriptions (absent: none)."""

    @abc.abstractmethod
    def unbilled_usage(self, subscription_id: str, meter_id: str, period_start: datetime) -> Decimal:
        """Units of the meter not billed yet: the period's usage from `period_start` and late usage before it."""

    def auto_recharges(self, subscription_id: str) -> list[AutoRecharge]:
        """The subscription's enabled auto-recharges; loaded once per run for every subscription it loaded (a
        billing run asks for each of its closes: one query, not one per close)."""
        memo = self._recharges_memo
        if subscription_id not in memo:
            wanted = sorted({subscription_id, *self.states} - memo.keys())
            loaded = self._load_auto_recharges(wanted)
            memo.update({sid: loaded.get(sid, []) for sid in wanted})
        return memo[subscription_id]

    def grant_paid_purchase(self, invoice: Invoice, state: SubscriptionState, at: datetime,
                            correlation: Envelope | None) -> str | None:
        """The invoice was paid: grant the credit it sold, if it is a purchase's not granted yet (once)."""
        purchase = self.credit_purchase_of_invoice(invoice.id)
        if purchase is None or purchase.status is PurchaseStatus.GRANTED:
            return None
        purchase.grant_into(self.ledger(state).ledger, at)
        self.save_credit_purchase(purchase)
        self.emit("credits.granted", credits_payload(state, purchase.meter_id, purchase.amount, "top_up",
                                                     purchase.expires_at),
                  key=state.id, event_id=event_uuid(state.id, "credits.granted", purchase.purchase_id), at=at,
                  correlation=correlation)
        self.touch(state)
        return purchase.purchase_id

    def cancel_purchase_of(self, invoice: Invoice, at: datetime) -> str | None:
        """The invoice will not be paid (voided, written off): its purchase, if any, grants nothing."""
        purchase = self.credit_purchase_of_invoice(invoice.id)
        if purchase is None or not purchase.cancel(at):
            return None
        self.save_credit_purchase(purchase)
        return purchase.purchase_id

    # --- the adapter's side: commit

    @abc.abstractmethod
    def _store_finalised_drafts(self, items: Sequence[InvoiceToStore]) -> set[str]:
        """Store stored drafts now finalised (row and lines); returns the ids really updated (still draft)."""

    @abc.abstractmethod
    def _allocate_invoice_numbers(self, count: int) -> list[str]: ...

    @abc.abstractmethod
    def _insert_invoices(self, items: Sequence[InvoiceToStore]) -> set[str]:
        """Store finalised invoices; returns the ids really inserted (an existing identity is not)."""

    @abc.abstractmethod
    def _write_state(self) -> None:
        """Write the state the run changed that no invoice number is in and that needs no invoice row of this run:
        invoices paid, subscriptions, ledgers, periods, history, command outcomes."""

    @abc.abstractmethod
    def _write_records(self) -> None:
        """Write the rest of what the run collected, once its invoices are stored: coupon redemptions, payment
        attempts, audit, outbox."""

    # --- loading

    def load(self, ids: Sequence[str]) -> None:
        missing = [i for i in ids if i not in self.states]
        if missing:  # a use case asks for subscriptions the run loaded already, several times per close
            self.states.update(self._load_subscriptions(missing))

    def subscription(self, subscription_id: str) -> SubscriptionState:
        self.load([subscription_id])
        state = self.states.get(subscription_id)
        if state is None:
            raise Refused("not_found", f"subscription {subscription_id} does not exist")
        return state

    def ledger(self, state: SubscriptionState) -> LedgerState:
        if state.id not in self.ledgers:
            if state.stored_version is None:
                meters = [MeterCredit(m, None if units else state.currency) for m, units in self.credit_kinds.items()]
                self.ledgers[state.id] = LedgerState(CreditLedger.open(state.id, meters, state.timezone), 0)
            else:
                self.ledgers.update(self._load_ledgers([state]))
        return self.ledgers[state.id]

    def load_ledgers(self, states: Sequence[SubscriptionState], *, unsettled_only: bool = False) -> None:
        """Load the ledgers of `states` for the run. `unsettled_only`: the run's use case only grants, draws,
        expires and reads balances (a period close), never reverses a draw, so the grants settled before (expired,
        written off) and their entries need not be replayed: a subscription's history would otherwise make
        every close cost more than the one before."""
        wanted = [s for s in states if s.id not in self.ledgers and s.stored_version is not None]
        self.ledgers.update(self._load_ledgers(wanted, unsettled_only=unsettled_only))

    def invoice(self, invoice_id: str) -> tuple[Invoice, Any] | None:
        """The invoice and its stored row (loaded once per run; the domain object is the live one)."""
        if invoice_id not in self.invoices:
            self.invoices.update(self._load_invoices([invoice_id]))
        return self.invoices.get(invoice_id)

    def load_invoices(self, invoice_ids: Sequence[str]) -> None:
        self.invoices.update(self._load_invoices(invoice_ids))

    @abc.abstractmethod
    def load_attempt_statuses(self, attempt_ids: Sequence[str]) -> None:
        """A hint before a run of payment outcomes: an adapter whose `settle_attempt` costs a round trip may read
        these attempts' statuses at once and skip the attempts already settled for good."""

    @abc.abstractmethod
    def load_purchases_of_invoices(self, invoice_ids: Sequence[str]) -> None:
        """A hint before a run of payment outcomes: an adapter whose `credit_purchase_of_invoice` costs a round
        trip may read (and lock) these invoices' purchases at once, and answer from what it read for the run."""

    def mark_paid(self, invoice: Invoice, provider_ref: str | None) -> None:
        """The invoice was paid in this run (`Invoice.mark_paid` done): its stored status, paid_at, amount paid and
        provider ref are written at commit with every other invoice the run paid, in one statement, and its
        attempts not sent yet are withdrawn with it (a paid invoice needs no charge). Until then the stored row
        still says open: `paid_refs` is what says it was paid (e.g. for `open_invoices_of`)."""
        self.paid_refs[invoice.id] = provider_ref

    # --- recording

    def touch(self, state: SubscriptionState) -> None:
        self.states[state.id] = state
        self.touched[state.id] = state

    def emit(self, type_: str, payload: Payload | Mapping[str, Any], *, key: str, event_id: uuid.UUID | None,
             at: datetime, correlation: Envelope | None, topic: str = topics.BILLING_EVENTS) -> None:
        """Queue an outgoing event for the outbox. Give a deterministic `event_id` when a replay must not
        emit a second copy."""
        body = payload.model_dump(mode="json") if isinstance(payload, Payload) else dict(payload)
        if at.tzinfo is None:
            raise ValueError(f"an event's instant is aware, got {at!r}")
        # NOTE: built without pydantic's validation: every field is the worker's own (a payload model's dump, an
        # aware instant, a UUID); a billing run builds tens of thousands and validating them was a visible share
        # of its CPU. `new_envelope` is the validating constructor, kept for everything read or built elsewhere.
        envelope = Envelope.model_construct(
            event_id=event_id or uuid.uuid4(), type=type_, schema_version=1, occurred_at=at.astimezone(UTC),
            producer=PRODUCER_NAME, correlation_id=str(correlation.event_id) if correlation else None, payload=body)
        self.outgoing.append(Outgoing(envelope, key, topic))

    def subscription_events(self, state: SubscriptionState, command: Envelope | None) -> None:
        """History rows and status-change events for what the aggregate recorded."""
        events = state.subscription.pull_events()
        self.history.append((events, str(command.event_id) if command else None))
        for event in events:
            change = status_change(event)
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

    def issue(self, invoice: Invoice, state: SubscriptionState, plan_id: str, command: Envelope, *,
              finalizes_at: datetime | None = None) -> None:
        """Queue a draft for finalisation (numbered at commit, in one counter update for the run); with
        `finalizes_at`, store it DRAFT until then instead (a grace: `handlers/drafts.py` finalises it)."""
        if finalizes_at is not None:
            self.drafts.append((IssuedInvoice(invoice, state, plan_id, str(command.event_id)), finalizes_at))
        else:
            self.issued.append(IssuedInvoice(invoice, state, plan_id, str(command.event_id)))
        self.invoice_of_key[str(invoice.key)] = invoice.id

    def finalise_draft(self, invoice: Invoice, state: SubscriptionState, plan_id: str, command: Envelope,
                       at: datetime) -> None:
        """Queue a stored draft for finalisation at `at`, through the same path as every invoice (numbered
        with the run's others, balance, payment attempt, events); its stored row is updated at commit."""
        self.issued.append(IssuedInvoice(invoice, state, plan_id, str(command.event_id), at=at, stored_draft=True))
        self.invoice_of_key[str(invoice.key)] = invoice.id

    def rating(self, result: RatingResult, state: SubscriptionState, plan_id: str, command: Envelope,
               at: datetime, *, finalizes_at: datetime | None = None) -> None:
        self.issue(result.invoice, state, plan_id, command, finalizes_at=finalizes_at)
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
            grant.grant_into(ledger)
            self.emit("credits.granted", credits_payload(state, grant.meter_id, grant.amount, grant.source,
                                                         grant.expires_at),
                      key=state.id, event_id=event_uuid(state.id, "credits.granted", grant.key), at=at,
                      correlation=command)
        self.touch(state)

    def expire_credits(self, state: SubscriptionState, at: datetime, command: Envelope) -> int:
        """Write off what is left of the grants that expired by `at` (the ledger decides) and announce it."""
        expired = self.ledger(state).ledger.expire(at)
        for entry in expired:
            self.emit("credits.expired", credits_payload(state, entry.meter, entry.amount, None, entry.at),
                      key=state.id, event_id=event_uuid(entry.entry_id), at=entry.at, correlation=command)
        self.settled_grants.append((state.id, at))
        return len(expired)

    def outcome(self, command: Envelope, subscription_id: str, status: str, *, code: str | None = None,
                detail: str | None = None, result: dict[str, Any] | None = None) -> None:
        """The worker's answer to a command ('applied', 'rejected' or 'ignored'); the first stored wins."""
        self.outcomes.append({"command_id": command.event_id, "subscription_id": subscription_id,
                              "command_type": command.type, "status": status, "error_code": code,
                              "error_detail": detail[:1000] if detail else None, "result": result})

    def applied(self, subscription_id: str, result: dict[str, Any] | None) -> dict[str, Any]:
        """An `applied` outcome's result: the subscription's snapshot, plus what the use case returned."""
        state = self.states.get(subscription_id)
        return {**(status_snapshot(state) if state else {}), **(result or {})}

    def add_attempt(self, attempt: PaymentAttempt) -> None:
        """A payment attempt to write *before* the executor calls the provider."""
        self.attempts.append(attempt)

    def attempts_of(self, invoice_id: str) -> dict[int, str]:
        """The invoice's attempts, stored or requested in this unit of work: attempt number -> status."""
        return self.stored_attempts_of(invoice_id) | {
            a.attempt_no: a.status.value for a in self.attempts if a.invoice_id == invoice_id}

    def add_audit(self, **row: Any) -> None:
        self.audit.append({"actor": PRODUCER_NAME, **row})

    # --- the customer balance (immediate writes: shared/adapters/postgres/customer_balance.py)

    def credit_customer_balance(self, customer_id: str, currency: str, amount_minor: int,
                                kind: BalanceEntryKind | str, *, entry_id: str, invoice_id: str | None = None,
                                credit_note_id: str | None = None, description: str, at: datetime) -> bool:
        """Credit `amount_minor` (> 0) to the customer's balance in `currency` as one entry of `kind`
        (credit_note, invoice_credit, adjustment, void_restore). `entry_id` is deterministic: a second
        credit with the same id writes nothing and answers False."""
        if isinstance(amount_minor, bool) or not isinstance(amount_minor, int) or amount_minor <= 0:
            raise ValueError(f"a credit to the balance is a positive int of minor units, got {amount_minor!r}")
        return self._apply_balance_entry(BalanceEntry(
            entry_id=entry_id, customer_id=customer_id, currency=currency, amount_minor=amount_minor,
            kind=BalanceEntryKind(kind), occurred_at=at, description=description, invoice_id=invoice_id,
            credit_note_id=credit_note_id))

    def debit_customer_balance(self, customer_id: str, currency: str, amount_minor: int,
                               kind: BalanceEntryKind | str, *, entry_id: str, invoice_id: str | None = None,
                               description: str, at: datetime) -> bool:
        """Take `amount_minor` (> 0) from the balance; refused (``insufficient_balance``) below zero. The
        row is locked first, so the figure checked is the one the write moves."""
        if isinstance(amount_minor, bool) or not isinstance(amount_minor, int) or amount_minor <= 0:
            raise ValueError(f"a debit of the balance is a positive int of minor units, got {amount_minor!r}")
        held = self.lock_customer_balances([(customer_id, currency)])[(customer_id, currency)]
        balance_after(customer_id, currency, held, -amount_minor)
        return self._apply_balance_entry(BalanceEntry(
            entry_id=entry_id, customer_id=customer_id, currency=currency, amount_minor=-amount_minor,
            kind=BalanceEntryKind(kind), occurred_at=at, description=description, invoice_id=invoice_id))

    # --- commit

    def commit(self) -> None:
        """Finalise the issued invoices, then write everything collected (inside the caller's transaction).

        The invoice numbers are taken as late as the transaction allows: the counter row stays locked from
        `_allocate_invoice_numbers` until the caller commits (what keeps them gapless), and every other batch
        of the issuer waits on it meanwhile. So the customer balances are settled and the state no number is in
        (subscriptions, ledgers, periods, history, outcomes, balance entries) is written first; only numbering,
        the invoice rows and what names them (attempts, redemptions, audit, outbox) are written under the lock.
        A run that finalises a credit purchase (a manual invoice: paying it from the balance grants credits
        into the ledger) writes its state after numbering, as before."""
        entries = self._settle_issued()
        state_first = not any(item.invoice.key.reason is InvoiceReason.MANUAL for item in self.issued)
        if state_first:
            self._write_state()
        self._apply_balance_entries(entries)
        self._finalise()
        self._store_drafts()
        if not state_first:
            self._write_state()
        self._write_records()

    def _store_drafts(self) -> None:
        """Store the invoices issued as drafts (no number, no payment attempt; dunning never sees them) with
        the instant their grace ends, announced as `invoice.drafted` (issue 15: webhooks can show it)."""
        if not self.drafts:
            return
        items = [InvoiceToStore(item.invoice, item.plan_id, item.state.subscription.payment_method_id,
                                finalizes_at=until) for item, until in self.drafts]
        inserted = self._insert_invoices(items)
        if len(inserted) != len(items):
            duplicates = sorted({i.invoice.id for i in items} - inserted)
            raise MessageRejected(f"invoices already exist for {duplicates[:5]}", code="duplicate_invoice")
        for item, until in self.drafts:
            invoice = item.invoice
            self.add_audit(occurred_at=invoice.created_at, action="invoice.drafted", entity_type="invoice",
                           entity_id=invoice.id, subscription_id=item.state.id,
                           customer_id=item.state.subscription.customer_id, command_id=item.command_id,
                           detail={"total_minor": invoice.total.amount_minor, "currency": invoice.currency,
                                   "finalizes_at": until.isoformat()})
            self.emit("invoice.drafted", invoice_event(invoice, item.state, finalizes_at=until), key=item.state.id,
                      event_id=event_uuid(invoice.id, "invoice.drafted"), at=invoice.created_at, correlation=None)

    def _settle_issued(self) -> list[BalanceEntry]:
        """The customer balances' part of finalising the issued invoices (locked, then decided in finalisation
        order): the entries to write. Needs no invoice number, so it runs before the numbering."""
        if not self.issued:
            return []
        available = self.lock_customer_balances([(i.invoice.customer_id, i.invoice.currency) for i in self.issued])
        entries: list[BalanceEntry] = []
        for item in self.issued:
            entries.extend(self.settle_with_balance(item.invoice, available, item.at or item.invoice.created_at))
        return entries

    def _finalise(self) -> None:
        """Number the issued invoices (settled with the balance by `_settle_issued`) and finalise them."""
        if not self.issued:
            return
        numbers = self._allocate_invoice_numbers(len(self.issued))
        to_store: list[InvoiceToStore] = []
        for item, number in zip(self.issued, numbers, strict=True):
            invoice, state = item.invoice, item.state
            at = item.at or invoice.created_at
            invoice.finalize(number=number, at=at)
            if invoice.status is InvoiceStatus.PAID and invoice.key.reason is InvoiceReason.MANUAL:
                self.grant_paid_purchase(invoice, state, at, None)  # a purchase the customer balance paid
            to_store.append(InvoiceToStore(invoice, item.plan_id, state.subscription.payment_method_id))
            self._invoice_events(invoice, state, at)
            if invoice.status is InvoiceStatus.OPEN and invoice.amount_due.is_positive():
                self.attempts.append(PaymentAttempt.request(
                    attempt_id=attempt_id_for(invoice.id, 1), invoice_id=invoice.id, attempt_no=1,
                    subscription_id=state.id,
                    customer_id=state.subscription.customer_id, amount=invoice.amount_due,
                    payment_method_id=state.subscription.payment_method_id, requested_at=at))
            self.add_audit(occurred_at=at, action="invoice.finalized", entity_type="invoice", entity_id=invoice.id,
                           subscription_id=state.id, customer_id=state.subscription.customer_id,
                           command_id=item.command_id,
                           detail={"number": number, "total_minor": invoice.total.amount_minor,
                                   "currency": invoice.currency, "reason": invoice.key.reason.value,
                                   "balance_applied_minor": invoice.balance_applied_minor})
        stored_drafts = {item.invoice.id for item in self.issued if item.stored_draft}
        inserted = self._insert_invoices([i for i in to_store if i.invoice.id not in stored_drafts])
        if stored_drafts:
            inserted |= self._store_finalised_drafts([i for i in to_store if i.invoice.id in stored_drafts])
        if len(inserted) != len(to_store):
            duplicates = sorted({i.invoice.id for i in to_store} - inserted)
            # NOTE: an invoice identity that already exists means this close or change was applied before
            # while the subscription says otherwise: refuse the batch rather than bill twice.
            raise MessageRejected(f"invoices already exist for {duplicates[:5]}", code="duplicate_invoice")

    def settle_with_balance(self, invoice: Invoice, available: dict[tuple[str, str], int],
                            at: datetime) -> list[BalanceEntry]:
        """The customer balance's part of finalising a DRAFT invoice; every finalisation goes through it,
        right before `invoice.finalize`. The domain decides (`Invoice.settle_balance`: a negative total is
        credited to the balance and the invoice settles at 0, otherwise it draws what it owes up to what the
        balance holds and only the rest is charged); this returns the entries that record it, for the caller
        to write with the run's others: an `invoice_credit` entry (a downgrade's credit, no longer carried on
        the subscription) or an `invoice_draw` entry. `available` holds the balances `lock_customer_balances`
        locked for this run (in a stable order), kept current here as entries are decided."""
        pair = (invoice.customer_id, invoice.currency)
        settled = invoice.settle_balance(available.get(pair, 0))
        entries: list[BalanceEntry] = []
        if settled.credited_minor:
            entries.append(BalanceEntry(
                entry_id=balance_entry_id(BalanceEntryKind.INVOICE_CREDIT, invoice.id),
                customer_id=invoice.customer_id, currency=invoice.currency, amount_minor=settled.credited_minor,
                kind=BalanceEntryKind.INVOICE_CREDIT, occurred_at=at, invoice_id=invoice.id,
                description="Credit from an invoice whose credits exceeded its charges"))
        if settled.drawn_minor:
            entries.append(BalanceEntry(
                entry_id=balance_entry_id(BalanceEntryKind.INVOICE_DRAW, invoice.id),
                customer_id=invoice.customer_id, currency=invoice.currency, amount_minor=-settled.drawn_minor,
                kind=BalanceEntryKind.INVOICE_DRAW, occurred_at=at, invoice_id=invoice.id,
                description="Applied to the invoice"))
        available[pair] = available.get(pair, 0) + settled.balance_change_minor
        return entries

    def _invoice_events(self, invoice: Invoice, state: SubscriptionState, at: datetime) -> None:
        payload: dict[str, Any] | None = None
        for event in invoice.pull_events():
            type_ = _ANNOUNCED_AT_FINALISATION.get(event.name)
            if type_ is None:
                continue
            # both events (finalised, and paid when nothing was due) describe the invoice as it is now: one payload
            payload = payload or invoice_event(invoice, state)
            self.emit(type_, payload, key=state.id, event_id=event_uuid(invoice.id, type_), at=at, correlation=None)


_ANNOUNCED_AT_FINALISATION = {"InvoiceFinalized": "invoice.finalized", "InvoicePaid": "invoice.paid"}


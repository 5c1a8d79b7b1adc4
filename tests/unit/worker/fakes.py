"""In-memory stand-ins for the billing worker's ports: a `FakeUnitOfWork` over a `FakeBillingStore`.

The store keeps what PostgreSQL would (subscriptions, ledgers, invoices, payment attempts, usage buckets,
outbox, command outcomes, history, audit) as copies, so a use case only changes it through the unit of work's
commit or its immediate writes, and `savepoint()` puts everything back when its block raises, as a SAVEPOINT
does.
"""

from __future__ import annotations

import copy
import copyreg
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from types import MappingProxyType, SimpleNamespace
from typing import Any

from services.billing_worker.service_layer.model import InvoiceToStore, LedgerState, SubscriptionState
from services.billing_worker.service_layer.unit_of_work import BillingUnitOfWork, Outgoing
from shared.domain.catalog import Catalog, MeterId
from shared.domain.credit_note import CreditNote, EarlierNote
from shared.domain.credit_purchase import AutoRecharge, CreditPurchase, PurchaseOrigin, PurchaseStatus
from shared.domain.customer_balance import BalanceEntry
from shared.domain.events import DomainEvent
from shared.domain.invoice import Invoice, InvoiceStatus, LineKind
from shared.domain.ledger import CreditLedger, MeterCredit
from shared.domain.payment_attempt import PaymentAttempt
from shared.domain.rating import GraceUsage

# The store keeps copies; a credit ledger's meters are a read-only mapping, copied as one.
copyreg.pickle(MappingProxyType, lambda proxy: (MappingProxyType, (dict(proxy),)))


@dataclass(frozen=True)
class Bucket:
    """Usage of one meter in one UTC hour (what the usage materialiser aggregates)."""

    subscription_id: str
    meter_id: str
    bucket_start: datetime
    quantity: Decimal


@dataclass(frozen=True)
class UsageClose:
    period_end: datetime
    totals: Mapping[str, Decimal]
    late: tuple[Bucket, ...] = ()


@dataclass
class FakeBillingStore:
    subscriptions: dict[str, SubscriptionState] = field(default_factory=dict)
    ledgers: dict[str, LedgerState] = field(default_factory=dict)
    invoices: dict[str, tuple[Invoice, SimpleNamespace]] = field(default_factory=dict)
    attempts: dict[str, dict[str, Any]] = field(default_factory=dict)
    usage: list[Bucket] = field(default_factory=list)
    billed: set[int] = field(default_factory=set)  # indexes into `usage`
    usage_closes: dict[tuple[str, datetime], UsageClose] = field(default_factory=dict)  # by (sub, period end)
    coupon_attachments: set[tuple[str, str]] = field(default_factory=set)
    redemptions: dict[str, Any] = field(default_factory=dict)
    periods: dict[tuple[str, datetime], dict[str, Any]] = field(default_factory=dict)
    history: list[DomainEvent] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)
    outbox: dict[uuid.UUID, Outgoing] = field(default_factory=dict)
    outcomes: dict[uuid.UUID, dict[str, Any]] = field(default_factory=dict)
    balances: dict[tuple[str, str], int] = field(default_factory=dict)  # (customer, currency) -> minor units
    balance_entries: dict[str, BalanceEntry] = field(default_factory=dict)  # by entry id, in write order
    next_invoice_number: int = 1
    credit_notes: dict[str, tuple[CreditNote, str]] = field(default_factory=dict)  # id -> (note, number)
    credit_purchases: dict[str, CreditPurchase] = field(default_factory=dict)
    auto_recharges: dict[str, list[AutoRecharge]] = field(default_factory=dict)  # enabled, by subscription
    unbilled: dict[tuple[str, str], Decimal] = field(default_factory=dict)  # (subscription, meter) -> units
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)  # by credit note id
    next_credit_note_number: int = 1
    commits: int = 0

    def record_usage(self, subscription_id: str, meter_id: str, quantity: int | str, at: datetime) -> None:
        hour = at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        self.usage.append(Bucket(subscription_id, meter_id, hour, Decimal(quantity)))

    def events(self, type_: str | None = None) -> list[Any]:
        """Envelopes in the outbox, in the order they were written (of one type if given)."""
        return [o.envelope for o in self.outbox.values() if type_ is None or o.envelope.type == type_]

    def invoices_of(self, subscription_id: str) -> list[Invoice]:
        return sorted((i for i, _ in self.invoices.values() if i.subscription_id == subscription_id),
                      key=lambda i: i.number or "")

    def lines(self, invoice: Invoice) -> list[tuple[str, int]]:
        return [(line.kind.value, line.amount.amount_minor) for line in invoice.lines]


class FakeUnitOfWork(BillingUnitOfWork):
    def __init__(self, catalog: Catalog, store: FakeBillingStore | None = None) -> None:
        self.store = store if store is not None else FakeBillingStore()
        super().__init__(catalog)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        saved = copy.deepcopy(self.store.__dict__)
        try:
            yield
        except BaseException:
            self.store.__dict__.update(saved)
            raise

    # --- reads

    def _load_subscriptions(self, ids: Sequence[str]) -> dict[str, SubscriptionState]:
        return {i: copy.deepcopy(self.store.subscriptions[i]) for i in ids if i in self.store.subscriptions}

    def _load_ledgers(self, states: Sequence[SubscriptionState], *,
                      unsettled_only: bool = False) -> dict[str, LedgerState]:
        # a stored subscription whose ledger never had a grant has an empty one, as replayed by the real adapter
        return {s.id: copy.deepcopy(self.store.ledgers[s.id]) if s.id in self.store.ledgers else
                LedgerState(CreditLedger.open(s.id, [MeterCredit(m, None if units else s.currency)
                                                     for m, units in self.credit_kinds.items()], s.timezone), 0)
                for s in states}

    def _load_invoices(self, invoice_ids: Sequence[str]) -> dict[str, tuple[Invoice, Any]]:
        return {i: copy.deepcopy(self.store.invoices[i]) for i in invoice_ids if i in self.store.invoices}

    def answered_commands(self, command_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        return {c for c in command_ids if c in self.store.outcomes}

    def close_usages(self, requests: Sequence[tuple[str, datetime, datetime]]) -> Mapping[str, UsageClose]:
        out: dict[str, UsageClose] = {}
        for sub, start, end in requests:
            stored = self.store.usage_closes.get((sub, end))
            if stored is not None:  # idempotent per (subscription, period end), as the real one
                out[sub] = stored
                continue
            totals: dict[str, Decimal] = {}
            late: list[Bucket] = []
            for index, bucket in enumerate(self.store.usage):
                if bucket.subscription_id != sub or index in self.store.billed or bucket.bucket_start >= end:
                    continue
                self.store.billed.add(index)
                if bucket.bucket_start >= start:
                    totals[bucket.meter_id] = totals.get(bucket.meter_id, Decimal(0)) + bucket.quantity
                else:
                    late.append(bucket)
            out[sub] = self.store.usage_closes[(sub, end)] = UsageClose(end, totals, tuple(late))
        return out

    def billed_usage(self, subscription_id: str, meter_ids: Sequence[str], period_start: datetime,
                     period_end: datetime) -> dict[str, Decimal]:
        out = {meter: Decimal(0) for meter in meter_ids}
        for index, bucket in enumerate(self.store.usage):
            if (index in self.store.billed and bucket.subscription_id == subscription_id
                    and bucket.meter_id in out and period_start <= bucket.bucket_start < period_end):
                out[bucket.meter_id] += bucket.quantity
        return out

    def coupon_times_redeemed(self, coupon_id: str) -> int:
        return sum(1 for coupon, _ in self.store.coupon_attachments if coupon == coupon_id)

    def open_invoices_of(self, subscription_id: str) -> list[str]:
        return [i.id for i, _ in self.store.invoices.values() if i.subscription_id == subscription_id
                and i.status in (InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE)]

    # --- immediate writes

    def attach_coupon(self, coupon_id: str, subscription_id: str, at: datetime) -> None:
        self.store.coupon_attachments.add((coupon_id, subscription_id))

    def save_invoice_status(self, invoice: Invoice, *, provider_ref: str | None = None,
                            at: datetime | None = None) -> None:
        _, row = self.store.invoices[invoice.id]
        if invoice.status is InvoiceStatus.PAID:
            row.amount_paid_minor = invoice.amount_due.amount_minor
            row.provider_ref = provider_ref or row.provider_ref
        self.store.invoices[invoice.id] = (copy.deepcopy(invoice), row)

    def load_attempt_statuses(self, attempt_ids: Sequence[str]) -> None:
        pass  # settle_attempt reads the in-memory store: nothing to read ahead

    def load_purchases_of_invoices(self, invoice_ids: Sequence[str]) -> None:
        pass  # credit_purchase_of_invoice reads the in-memory store: nothing to read ahead

    def settle_attempt(self, attempt_id: str, status: str, provider_ref: str | None, decline_code: str | None,
                       hard: bool, at: datetime) -> bool:
        attempt = self.store.attempts.get(attempt_id)
        if attempt is None:
            return False
        open_statuses = {"pending", "in_flight", "unknown"}
        if status == "succeeded":
            if any(a["status"] == "succeeded" for a in self.store.attempts.values()
                   if a["invoice_id"] == attempt["invoice_id"]):
                return False
            open_statuses.add("declined")
        if attempt["status"] not in open_statuses:
            return False
        attempt.update(status=status, provider_ref=provider_ref or attempt.get("provider_ref"),
                       decline_code=decline_code, hard_decline=hard, completed_at=at)
        return True

    def attempt_no(self, attempt_id: str | None) -> int | None:
        attempt = self.store.attempts.get(attempt_id) if attempt_id else None
        return int(attempt["attempt_no"]) if attempt else None

    def stored_attempts_of(self, invoice_id: str) -> dict[int, str]:
        return {int(a["attempt_no"]): str(a["status"]) for a in self.store.attempts.values()
                if a["invoice_id"] == invoice_id}

    def record_failed_attempt(self, invoice_id: str, decline_code: str | None) -> None:
        _, row = self.store.invoices[invoice_id]
        row.attempt_count += 1
        row.last_decline_code = decline_code

    def cancel_pending_attempts(self, invoice_id: str, at: datetime) -> None:
        for attempt in self.store.attempts.values():
            if attempt["invoice_id"] == invoice_id and attempt["status"] == "pending":
                attempt.update(status="cancelled", completed_at=at)

    def detach_pending_payment_method(self, subscription_id: str) -> int:
        detached = [a for a in self.store.attempts.values() if a["subscription_id"] == subscription_id
                    and a["status"] == "pending" and a["payment_method_id"] is not None]
        for attempt in detached:
            attempt["payment_method_id"] = None
        return len(detached)

    def credit_purchase(self, purchase_id: str) -> CreditPurchase | None:
        return copy.deepcopy(self.store.credit_purchases.get(purchase_id))

    def credit_purchase_of_invoice(self, invoice_id: str) -> CreditPurchase | None:
        found = [p for p in self.store.credit_purchases.values() if p.invoice_id == invoice_id]
        return copy.deepcopy(found[0]) if found else None

    def add_credit_purchase(self, purchase: CreditPurchase) -> bool:
        taken = purchase.purchase_id in self.store.credit_purchases or any(
            p.invoice_id == purchase.invoice_id for p in self.store.credit_purchases.values())
        pending_recharge = purchase.origin is PurchaseOrigin.AUTO_RECHARGE and any(
            p.origin is PurchaseOrigin.AUTO_RECHARGE and p.status is PurchaseStatus.PENDING
            and (p.subscription_id, p.meter_id) == (purchase.subscription_id, purchase.meter_id)
            for p in self.store.credit_purchases.values())
        if taken or pending_recharge:
            return False
        self.store.credit_purchases[purchase.purchase_id] = copy.deepcopy(purchase)
        return True

    def save_credit_purchase(self, purchase: CreditPurchase) -> None:
        self.store.credit_purchases[purchase.purchase_id] = copy.deepcopy(purchase)

    def _load_auto_recharges(self, subscription_ids: Sequence[str]) -> dict[str, list[AutoRecharge]]:
        return {s: list(self.store.auto_recharges[s]) for s in subscription_ids if s in self.store.auto_recharges}

    def unbilled_usage(self, subscription_id: str, meter_id: str, period_start: datetime) -> Decimal:
        return self.store.unbilled.get((subscription_id, meter_id), Decimal(0))

    def earlier_credit_notes(self, invoice_id: str) -> list[EarlierNote]:
        return [EarlierNote(total_minor=n.total.amount_minor, tax_minor=n.tax.amount_minor,
                            refunded_minor=n.refunded.amount_minor,
                            lines=tuple((ln.line_no, ln.amount.amount_minor) for ln in n.lines
                                        if ln.line_no is not None))
                for n, _ in self.store.credit_notes.values() if n.invoice_id == invoice_id]

    def store_credit_note(self, note: CreditNote, *, issuer: str, payment_ref: str | None) -> str:
        number = f"CN-{self.store.next_credit_note_number:06d}"
        self.store.next_credit_note_number += 1
        self.store.credit_notes[note.id] = (note, number)
        if note.refunded.is_positive():
            self.store.refunds[note.id] = {"amount_minor": note.refunded.amount_minor, "payment_ref": payment_ref,
                                           "status": "pending"}
        return number

    def fee_line_of(self, subscription_id: str, period_start: datetime, period_end: datetime
                    ) -> tuple[str, int] | None:
        found = [(invoice.finalized_at, invoice.id, n)
                 for invoice, _ in self.store.invoices.values()
                 if invoice.subscription_id == subscription_id
                 and invoice.status not in (InvoiceStatus.DRAFT, InvoiceStatus.VOID)
                 for n, line in enumerate(invoice.lines, start=1)
                 if line.kind is LineKind.FEE and line.period is not None
                 and (line.period.start, line.period.end) == (period_start, period_end)]
        return max(found, key=lambda f: (f[0] or datetime.min.replace(tzinfo=UTC), f[2]))[1:] if found else None

    def save_invoice_credit(self, invoice: Invoice, at: datetime) -> int:
        row = self.store.invoices[invoice.id][1]
        self.store.invoices[invoice.id] = (copy.deepcopy(invoice), row)
        withdrawn = [a for a in self.store.attempts.values()
                     if a["invoice_id"] == invoice.id and a["status"] == "pending"]
        for attempt in withdrawn:
            attempt.update(status="cancelled", completed_at=at)
        return len(withdrawn)

    def lock_customer_balances(self, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
        return {pair: self.store.balances.get(pair, 0) for pair in sorted(set(pairs))}

    def _apply_balance_entry(self, entry: BalanceEntry) -> bool:
        if entry.entry_id in self.store.balance_entries:
            return False
        pair = (entry.customer_id, entry.currency)
        after = self.store.balances.get(pair, 0) + entry.amount_minor
        if after < 0:  # the CHECK (balance_minor >= 0) of the real table
            raise AssertionError(f"balance of {pair} would become {after}")
        self.store.balance_entries[entry.entry_id] = entry
        self.store.balances[pair] = after
        return True

    # --- commit

    def _allocate_invoice_numbers(self, count: int) -> list[str]:
        first = self.store.next_invoice_number
        self.store.next_invoice_number += count
        return [f"FAKE-{n:06d}" for n in range(first, first + count)]

    def _insert_invoices(self, items: Sequence[InvoiceToStore]) -> set[str]:
        inserted: set[str] = set()
        for item in items:
            if item.invoice.id in self.store.invoices:
                continue
            row = SimpleNamespace(amount_paid_minor=0, provider_ref=None, attempt_count=0, last_decline_code=None,
                                  issuer="default",
                                  plan_id=item.plan_id, payment_method_id=item.payment_method_id,
                                  finalizes_at=item.finalizes_at)
            self.store.invoices[item.invoice.id] = (copy.deepcopy(item.invoice), row)
            inserted.add(item.invoice.id)
        return inserted

    def _store_finalised_drafts(self, items: Sequence[InvoiceToStore]) -> set[str]:
        updated: set[str] = set()
        for item in items:
            stored = self.store.invoices.get(item.invoice.id)
            if stored is None or stored[0].status is not InvoiceStatus.DRAFT:
                continue
            self.store.invoices[item.invoice.id] = (copy.deepcopy(item.invoice), stored[1])
            updated.add(item.invoice.id)
        return updated

    def grace_usage(self, subscription_id: str, period_start: datetime, period_end: datetime) -> GraceUsage:
        stored = self.store.usage_closes.get((subscription_id, period_end))
        closed = {MeterId(m): q for m, q in (stored.totals if stored else {}).items()}
        later = any(sub == subscription_id and end > period_end for sub, end in self.store.usage_closes)
        if stored is None or later:
            return GraceUsage(closed=closed, added={})
        added: dict[MeterId, Decimal] = {}
        for index, bucket in enumerate(self.store.usage):
            if (bucket.subscription_id == subscription_id and index not in self.store.billed
                    and period_start <= bucket.bucket_start < period_end):
                self.store.billed.add(index)
                added[MeterId(bucket.meter_id)] = added.get(MeterId(bucket.meter_id), Decimal(0)) + bucket.quantity
        totals = {str(m): closed.get(m, Decimal(0)) + added.get(m, Decimal(0)) for m in set(closed) | set(added)}
        self.store.usage_closes[(subscription_id, period_end)] = UsageClose(period_end, totals, stored.late)
        return GraceUsage(closed=closed, added=added)

    def _write_state(self) -> None:
        store = self.store
        for invoice_id, provider_ref in self.paid_refs.items():  # mark_paid: written at commit, as by the adapter
            self.save_invoice_status(self.invoices[invoice_id][0], provider_ref=provider_ref)
        for state in self.touched.values():
            state.stored_version = state.subscription.version
            store.subscriptions[state.id] = copy.deepcopy(state)
        for sub_id, ledger in self.ledgers.items():
            store.ledgers[sub_id] = copy.deepcopy(ledger)
        for period in self.periods:
            key = (period["subscription_id"], period["period_start"])
            merged = {**store.periods.get(key, {}), **{k: v for k, v in period.items() if v is not None}}
            store.periods[key] = merged
        for events, _command_id in self.history:
            store.history.extend(events)
        for outcome in self.outcomes:
            store.outcomes.setdefault(outcome["command_id"], outcome)

    def _write_records(self) -> None:
        store = self.store
        for redemption, sub_id, invoice_id, at in self.redemptions:
            store.redemptions.setdefault(redemption.key, (redemption, sub_id, invoice_id, at))
        for attempt in self.attempts:
            store.attempts.setdefault(attempt.attempt_id, _attempt_row(attempt))
        store.audit.extend(self.audit)
        for outgoing in self.outgoing:
            store.outbox.setdefault(outgoing.envelope.event_id, outgoing)
        store.commits += 1


def _attempt_row(attempt: PaymentAttempt) -> dict[str, Any]:
    return {"attempt_id": attempt.attempt_id, "invoice_id": attempt.invoice_id, "attempt_no": attempt.attempt_no,
            "subscription_id": attempt.subscription_id, "amount_minor": attempt.amount.amount_minor,
            "payment_method_id": attempt.payment_method_id, "status": "pending", "reason": attempt.reason,
            "requested_at": attempt.requested_at}

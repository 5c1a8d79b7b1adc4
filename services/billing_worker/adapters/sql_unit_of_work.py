"""`BillingUnitOfWork` over the batch's PostgreSQL connection (the consumer owns the transaction).

Reads load aggregates through `billing_repository`; `commit()` writes what the run collected in a few
set-based statements (COPY for a billing run's thousands of rows); `savepoint()` is a SAVEPOINT.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from services.billing_worker.adapters import billing_repository as repo
from services.billing_worker.adapters import credit_notes
from services.billing_worker.adapters import credit_purchases as purchases
from services.billing_worker.adapters import payment_attempts as attempts
from services.billing_worker.adapters.grace_usage import grace_usage
from services.billing_worker.adapters.outbox import add_unit_of_work_outbox
from services.billing_worker.service_layer.model import InvoiceToStore, LedgerState, SubscriptionState
from services.billing_worker.service_layer.unit_of_work import BillingUnitOfWork, UsageClose
from shared.adapters.postgres import customer_balance
from shared.adapters.postgres.billed_usage import billed_usage
from shared.adapters.postgres.schema.core import command_outcomes
from shared.adapters.postgres.usage_reads import usage_since
from shared.domain.catalog import Catalog
from shared.domain.coupons import CouponId
from shared.domain.credit_note import CreditNote, EarlierNote
from shared.domain.credit_purchase import AutoRecharge, CreditPurchase
from shared.domain.customer_balance import BalanceEntry
from shared.domain.invoice import Invoice
from shared.domain.payment_attempt import Transition
from shared.domain.rating import GraceUsage

# close_usages(conn, [(subscription_id, period_start, period_end), ...]) -> {subscription_id: UsageClose}
CloseUsages = Callable[[sa.Connection, Sequence[tuple[str, datetime, datetime]]], Mapping[str, UsageClose]]


class SqlBillingUnitOfWork(BillingUnitOfWork):
    def __init__(self, conn: sa.Connection, catalog: Catalog, close_usages: CloseUsages,
                 kinds: Mapping[str, bool] | None = None) -> None:
        self.conn = conn
        self._close_usages = close_usages
        super().__init__(catalog, kinds)

    def savepoint(self) -> AbstractContextManager[Any]:
        return self.conn.begin_nested()

    # --- reads

    def _load_subscriptions(self, ids: Sequence[str]) -> dict[str, SubscriptionState]:
        return repo.load_subscriptions(self.conn, ids)

    def _load_ledgers(self, states: Sequence[SubscriptionState], *,
                      unsettled_only: bool = False) -> dict[str, LedgerState]:
        return repo.load_ledgers(self.conn, states, self.credit_kinds, unsettled_only=unsettled_only)

    def _load_invoices(self, invoice_ids: Sequence[str]) -> dict[str, tuple[Invoice, Any]]:
        return repo.load_invoices(self.conn, invoice_ids)

    def answered_commands(self, command_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        return repo.answered_commands(self.conn, command_ids)

    def close_usages(self, requests: Sequence[tuple[str, datetime, datetime]]) -> Mapping[str, UsageClose]:
        return self._close_usages(self.conn, requests)

    def billed_usage(self, subscription_id: str, meter_ids: Sequence[str], period_start: datetime,
                     period_end: datetime) -> dict[str, Decimal]:
        return billed_usage(self.conn, subscription_id, meter_ids, period_start, period_end)

    def coupon_times_redeemed(self, coupon_id: str) -> int:
        # a coupon the catalog knows to be unlimited is not locked: its count decides nothing (see the repository)
        coupon = self.catalog.coupons.get(CouponId(coupon_id))
        unlimited = coupon is not None and coupon.max_redemptions is None
        return repo.coupon_times_redeemed(self.conn, coupon_id, lock=not unlimited)

    def open_invoices_of(self, subscription_id: str) -> list[str]:
        return repo.open_invoices_of(self.conn, subscription_id)

    # --- immediate writes

    def attach_coupon(self, coupon_id: str, subscription_id: str, at: datetime) -> None:
        repo.attach_coupon(self.conn, coupon_id, subscription_id, at)

    def save_invoice_status(self, invoice: Invoice, *, provider_ref: str | None = None,
                            at: datetime | None = None) -> None:
        repo.save_invoice_status(self.conn, invoice, provider_ref=provider_ref, at=at)

    def begin(self, at: datetime) -> None:
        super().begin(at)
        self._attempt_statuses: dict[str, str] = {}  # read by load_attempt_statuses, for this run
        self._purchases_of: dict[str, CreditPurchase | None] = {}  # read by load_purchases_of_invoices

    def load_attempt_statuses(self, attempt_ids: Sequence[str]) -> None:
        self._attempt_statuses.update(attempts.statuses_of(self.conn, attempt_ids))

    def settle_attempt(self, attempt_id: str, status: str, provider_ref: str | None, decline_code: str | None,
                       hard: bool, at: datetime) -> bool:
        read = self._attempt_statuses.get(attempt_id)
        transition = Transition.ACCEPT_REPORTED_SUCCESS if status == "succeeded" else \
            Transition.ACCEPT_REPORTED_FAILURE
        if read is not None and attempts.settled_for_good(transition, read):
            # NOTE: the executor's own outcomes land here: it settled the attempt in the transaction that queued
            # the message, so the compare-and-set below would match nothing; skipped without a round trip.
            return False
        return attempts.accept_reported_outcome(self.conn, attempt_id, succeeded=status == "succeeded",
                                                provider_ref=provider_ref, decline_code=decline_code,
                                                hard_decline=hard, at=at)

    def attempt_no(self, attempt_id: str | None) -> int | None:
        return attempts.attempt_no_of(self.conn, attempt_id)

    def stored_attempts_of(self, invoice_id: str) -> dict[int, str]:
        return attempts.numbers_of_invoice(self.conn, invoice_id)

    def record_failed_attempt(self, invoice_id: str, decline_code: str | None) -> None:
        repo.record_failed_attempt(self.conn, invoice_id, decline_code)

    def cancel_pending_attempts(self, invoice_id: str, at: datetime) -> None:
        attempts.withdraw_pending_of_invoice(self.conn, invoice_id, at)

    def detach_pending_payment_method(self, subscription_id: str) -> int:
        return attempts.detach_pending_payment_method(self.conn, subscription_id)

    def earlier_credit_notes(self, invoice_id: str) -> list[EarlierNote]:
        return credit_notes.earlier_credit_notes(self.conn, invoice_id)

    def store_credit_note(self, note: CreditNote, *, issuer: str, payment_ref: str | None) -> str:
        return credit_notes.store_credit_note(self.conn, note, issuer=issuer, payment_ref=payment_ref)

    def fee_line_of(self, subscription_id: str, period_start: datetime, period_end: datetime
                    ) -> tuple[str, int] | None:
        return credit_notes.fee_line_of(self.conn, subscription_id, period_start, period_end)

    def save_invoice_credit(self, invoice: Invoice, at: datetime) -> int:
        credit_notes.save_invoice_credit(self.conn, invoice, at)
        return attempts.withdraw_pending_of_invoice(self.conn, invoice.id, at)

    def lock_customer_balances(self, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
        return customer_balance.lock_balances(self.conn, pairs)

    def _apply_balance_entry(self, entry: BalanceEntry) -> bool:
        return customer_balance.apply_entry(self.conn, entry)

    def _apply_balance_entries(self, entries: Sequence[BalanceEntry]) -> None:
        customer_balance.apply_entries(self.conn, entries)

    def credit_purchase(self, purchase_id: str) -> CreditPurchase | None:
        return purchases.purchase(self.conn, purchase_id)

    def load_purchases_of_invoices(self, invoice_ids: Sequence[str]) -> None:
        found = purchases.purchases_of_invoices(self.conn, invoice_ids)
        self._purchases_of.update({i: found.get(i) for i in invoice_ids})

    def credit_purchase_of_invoice(self, invoice_id: str) -> CreditPurchase | None:
        if invoice_id in self._purchases_of:  # read (and locked) with the run: a copy, as a read would give
            read = self._purchases_of[invoice_id]
            return copy.deepcopy(read) if read is not None else None
        return purchases.purchase_of_invoice(self.conn, invoice_id)

    def add_credit_purchase(self, purchase: CreditPurchase) -> bool:
        return purchases.add(self.conn, purchase)

    def save_credit_purchase(self, purchase: CreditPurchase) -> None:
        purchases.save(self.conn, purchase)
        if purchase.invoice_id in self._purchases_of:
            self._purchases_of[purchase.invoice_id] = copy.deepcopy(purchase)

    def _load_auto_recharges(self, subscription_ids: Sequence[str]) -> dict[str, list[AutoRecharge]]:
        return purchases.enabled_recharges(self.conn, subscription_ids)

    def unbilled_usage(self, subscription_id: str, meter_id: str, period_start: datetime) -> Decimal:
        usage = usage_since(self.conn, subscription_id, period_start)
        return usage.totals.get(meter_id, Decimal(0)) + usage.pending_late.get(meter_id, Decimal(0))

    # --- commit

    def _allocate_invoice_numbers(self, count: int) -> list[str]:
        return repo.allocate_invoice_numbers(self.conn, count)

    def _insert_invoices(self, items: Sequence[InvoiceToStore]) -> set[str]:
        return repo.insert_invoices(self.conn, items)

    def _store_finalised_drafts(self, items: Sequence[InvoiceToStore]) -> set[str]:
        return repo.store_finalised_drafts(self.conn, items)

    def grace_usage(self, subscription_id: str, period_start: datetime, period_end: datetime) -> GraceUsage:
        return grace_usage(self.conn, subscription_id, period_start, period_end)

    def _write_state(self) -> None:
        conn = self.conn
        repo.save_paid_invoices(conn, [(self.invoices[i][0], ref) for i, ref in self.paid_refs.items()])
        # a paid invoice's attempts not sent yet (a retry queued before a webhook said paid) are withdrawn with it
        attempts.withdraw_pending_of_invoices(conn, list(self.paid_refs), self.now)
        repo.save_subscriptions(conn, list(self.touched.values()))
        customer_of = {sid: s.subscription.customer_id for sid, s in self.states.items()}
        grants, entries = repo.ledger_rows(self.ledgers, customer_of, self.now, self.invoice_of_key)
        repo.save_ledger_rows(conn, grants, entries, self.settled_grants)
        repo.record_periods(conn, self.periods)
        repo.append_history(conn, [row for events, command_id in self.history
                                   for row in repo.history_rows(events, command_id)])
        repo.bulk_insert(conn, command_outcomes, self.outcomes, ignore_conflicts_on=["command_id"])

    def _write_records(self) -> None:
        conn = self.conn
        repo.insert_redemptions(conn, self.redemptions)
        attempts.insert_requested(conn, self.attempts)
        repo.append_audit(conn, self.audit)
        add_unit_of_work_outbox(conn, [(o.topic, o.key, o.envelope) for o in self.outgoing])

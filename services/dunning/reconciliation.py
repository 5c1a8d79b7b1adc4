"""Reconciliation: settle payment attempts whose outcome is unknown by asking the provider, before any
dunning retry runs (DESIGN rule 4: unknown outcomes are reconciled, never retried blind).

A timeout after a charge request leaves an attempt ``unknown`` (or ``in_flight`` with an expired lease
when the worker died mid-call). The retry gate (``PaymentAttemptReader.count_unsettled``) keeps every
dunning retry of that invoice waiting; this job looks the attempt up through the ``PaymentGateway`` port
and reports what the provider knows as a ``payments.v1`` outcome (source ``reconciliation``) through the
outbox. The billing worker stays the single writer of attempts and invoices: it applies the outcome, and
its ``invoice.paid`` / ``invoice.payment_failed`` event then closes or advances the dunning case.

A second pass (``reconcile_open_invoices``) catches payments we never heard of: an open invoice whose
PaymentIntent succeeded at the provider (the customer paid on the hosted page, the provider's own retry
worked, the ``invoice.paid`` webhook was lost). It only reads the provider, never charges; when the
PaymentIntent succeeded for this invoice, for its amount and currency, it reports a ``PaymentSucceeded``
(source ``reconciliation``) for the worker to apply, which then closes the dunning case.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final

import sqlalchemy as sa

from shared.adapters.payments.port import ChargeOutcome, ChargeStatus, PaymentGateway, PaymentGatewayError
from shared.adapters.postgres.outbox import add_to_outbox
from shared.adapters.postgres.schema.billing import attempt_status_by_key, invoices, payment_attempts
from shared.adapters.postgres.schema.dunning import dunning_cases
from shared.contracts import topics
from shared.contracts.envelope import new_envelope
from shared.contracts.messages import TYPE_OF, Payload, PaymentFailed, PaymentSucceeded
from shared.domain.clock import Clock
from shared.domain.payment_attempt import UNSETTLED as UNSETTLED_STATUSES
from shared.domain.payment_attempt import AttemptStatus
from shared.observability import kv

log = logging.getLogger("billing.dunning.reconciliation")

UNSETTLED: Final = tuple(sorted(s.value for s in UNSETTLED_STATUSES))  # the domain's: no answer recorded yet
# NOTE: how long after dunning gave up an invoice is still compared with the provider. A payment taken
# later than that is found by the provider's own reports, not by this job (it would scan forever).
DEFAULT_UNCOLLECTIBLE_WINDOW: Final = timedelta(days=30)
_IDS: Final = uuid.UUID("0c6b7d8e-52a1-4f0e-8d7c-3f5e9a1b2c4d")


class PaymentAttemptReader:
    """Read-only view of the worker's ``payment_attempts`` (dunning never writes them)."""

    def count_unsettled(self, conn: sa.Connection, invoice_id: str) -> int:
        """Attempts of the invoice not final yet: requested, in flight or unknown."""
        count: int = conn.execute(
            sa.select(sa.func.count()).select_from(payment_attempts)
            .where(payment_attempts.c.invoice_id == invoice_id, attempt_status_by_key(UNSETTLED))
        ).scalar_one()
        return count

    def requested_at(self, conn: sa.Connection, invoice_id: str, attempt_no: int) -> datetime | None:
        """The billing instant the charge of attempt `attempt_no` of the invoice was decided, if written."""
        a = payment_attempts
        at: datetime | None = conn.execute(
            sa.select(a.c.requested_at).where(a.c.invoice_id == invoice_id, a.c.attempt_no == attempt_no)
        ).scalar_one_or_none()
        return at

    def reason_of(self, conn: sa.Connection, invoice_id: str, attempt_no: int) -> str | None:
        """Why attempt `attempt_no` of the invoice was made (its ``reason``), if written."""
        a = payment_attempts
        reason: str | None = conn.execute(
            sa.select(a.c.reason).where(a.c.invoice_id == invoice_id, a.c.attempt_no == attempt_no)
        ).scalar_one_or_none()
        return reason

    def needing_lookup(self, conn: sa.Connection, limit: int,
                       after: tuple[datetime, str] | None = None) -> list[sa.Row[Any]]:
        """Unknown outcomes, and in-flight attempts whose executor lease expired (it died mid-call). Oldest
        first, after the keyset ``after`` (created_at, attempt id)."""
        a = payment_attempts
        query = (sa.select(a).where(sa.or_(a.c.status == AttemptStatus.UNKNOWN.value,
                                           sa.and_(a.c.status == AttemptStatus.IN_FLIGHT.value,
                                                   a.c.lease_until < sa.func.now())))
                 .order_by(a.c.created_at, a.c.attempt_id).limit(limit))
        if after is not None:
            query = query.where(sa.tuple_(a.c.created_at, a.c.attempt_id)
                                > sa.tuple_(sa.literal(after[0]), sa.literal(after[1])))
        return list(conn.execute(query).all())

    def open_invoices_to_check(self, conn: sa.Connection, limit: int,
                               after: tuple[datetime, str] | None = None,
                               uncollectible_since: datetime | None = None) -> list[OpenInvoice]:
        """Open invoices with something left to pay that the provider may have been paid for: charged at
        least once (an attempt or the invoice carries a provider object) or in an open dunning case. Left
        out: invoices with an attempt not settled yet (the first pass owns them) or already succeeded (its
        outcome is on its way to the worker). Oldest first, after the keyset ``after`` (created_at, id).

        With ``uncollectible_since``, invoices dunning gave up on at or after that instant are included too:
        a customer may still pay one at the provider (a late 3-D Secure confirmation, a hosted page)."""
        i, a, c = invoices, payment_attempts, dunning_cases
        latest_ref = (sa.select(a.c.provider_ref)
                      .where(a.c.invoice_id == i.c.invoice_id, a.c.provider_ref.is_not(None))
                      .order_by(a.c.attempt_no.desc()).limit(1).scalar_subquery())
        charged = sa.exists().where(a.c.invoice_id == i.c.invoice_id, a.c.provider_ref.is_not(None))
        in_dunning = sa.exists().where(c.c.invoice_id == i.c.invoice_id, c.c.status == "open")
        busy = sa.exists().where(a.c.invoice_id == i.c.invoice_id,
                                 a.c.status.in_((*UNSETTLED, AttemptStatus.SUCCEEDED.value)))
        status_wanted: sa.ColumnElement[bool] = i.c.status == "open"
        if uncollectible_since is not None:
            status_wanted = sa.or_(status_wanted, sa.and_(i.c.status == "uncollectible",
                                                          i.c.marked_uncollectible_at >= uncollectible_since))
        query = (sa.select(i.c.invoice_id, i.c.subscription_id, i.c.customer_id, i.c.currency, i.c.created_at,
                           (i.c.amount_due_minor - i.c.amount_paid_minor).label("due_minor"),
                           sa.func.coalesce(latest_ref, i.c.provider_ref).label("provider_ref"),
                           in_dunning.label("in_dunning"))
                 .where(status_wanted, i.c.amount_due_minor > i.c.amount_paid_minor,
                        sa.or_(charged, i.c.provider_ref.is_not(None), in_dunning), ~busy)
                 .order_by(i.c.created_at, i.c.invoice_id).limit(limit))
        if after is not None:
            query = query.where(sa.tuple_(i.c.created_at, i.c.invoice_id)
                                 > sa.tuple_(sa.literal(after[0]), sa.literal(after[1])))
        return [OpenInvoice(invoice_id=row.invoice_id, subscription_id=row.subscription_id,
                            customer_id=row.customer_id, due_minor=int(row.due_minor), currency=row.currency,
                            provider_ref=row.provider_ref, in_dunning=bool(row.in_dunning),
                            created_at=row.created_at)
                for row in conn.execute(query)]


@dataclass(frozen=True, slots=True)
class OpenInvoice:
    """An open invoice as the open-invoice pass sees it: what is left to pay and its provider object."""

    invoice_id: str
    subscription_id: str
    customer_id: str
    due_minor: int
    currency: str
    provider_ref: str | None
    in_dunning: bool = False
    created_at: datetime | None = None


class InvoiceVerdict(StrEnum):
    PAID = "paid"
    """The provider took the payment for this invoice: reported to the worker."""
    MISMATCH = "mismatch"
    """The provider says succeeded, but for another invoice, PaymentIntent, amount or currency: refused."""
    DECLINED = "declined"
    UNKNOWN = "unknown"
    NO_RECORD = "no_record"


def judge_provider_answer(invoice: OpenInvoice, outcome: ChargeOutcome | None) -> tuple[InvoiceVerdict, str]:
    """What the provider's answer about an open invoice's PaymentIntent means for that invoice.

    Only a success that is provably this invoice's (same invoice id in the provider object, the same
    PaymentIntent we charged, the amount still due in the invoice's currency) counts as paid; anything
    else that says "succeeded" is a mismatch for a human, never a payment of this invoice.
    """
    if outcome is None:
        return InvoiceVerdict.NO_RECORD, "the provider has no payment intent for this invoice"
    if outcome.status is ChargeStatus.DECLINED:
        return InvoiceVerdict.DECLINED, f"the payment intent is not paid ({outcome.decline_code})"
    if outcome.status is not ChargeStatus.SUCCEEDED:
        return InvoiceVerdict.UNKNOWN, outcome.message or "the payment intent is still processing"
    mismatch = outcome.mismatch_for(invoice_id=invoice.invoice_id, provider_ref=invoice.provider_ref,
                                    due_minor=invoice.due_minor, currency=invoice.currency)
    if mismatch is not None:
        return InvoiceVerdict.MISMATCH, mismatch
    return InvoiceVerdict.PAID, "the payment intent succeeded for the amount due"


@dataclass(frozen=True, slots=True)
class InvoiceSettlement:
    invoice_id: str
    subscription_id: str
    verdict: InvoiceVerdict
    provider_ref: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class ReconciliationRun:
    """What one tick of the reconciliation timer did: both passes, for logs, metrics and tests."""

    attempts: list[Settlement] = field(default_factory=list)
    invoices: list[InvoiceSettlement] = field(default_factory=list)

    @property
    def invoices_paid(self) -> int:
        return sum(1 for s in self.invoices if s.verdict is InvoiceVerdict.PAID)

    @property
    def invoices_refused(self) -> int:
        return sum(1 for s in self.invoices if s.verdict is InvoiceVerdict.MISMATCH)


@dataclass(frozen=True, slots=True)
class Settlement:
    attempt_id: str
    invoice_id: str
    status: str
    """succeeded, declined, not_charged, or still_unknown (nothing published)."""


class PaymentReconciler:
    def __init__(self, engine: sa.Engine, gateway: PaymentGateway, clock: Clock,
                 reader: PaymentAttemptReader | None = None,
                 uncollectible_window: timedelta = DEFAULT_UNCOLLECTIBLE_WINDOW) -> None:
        self._engine = engine
        self._gateway = gateway
        self._clock = clock
        self._reader = reader or PaymentAttemptReader()
        self._uncollectible_window = uncollectible_window
        self._after: tuple[datetime, str] | None = None
        self._attempts_after: tuple[datetime, str] | None = None

    def run(self, limit: int = 50) -> ReconciliationRun:
        """One tick: settle unknown attempts first, then look at open invoices (both bounded by ``limit``).

        A provider error in the first pass still lets the open-invoice pass run, since that one never looks
        at an invoice with an unsettled attempt; the error is raised afterwards for the timer to log.
        """
        try:
            attempts = self.run_once(limit)
        except PaymentGatewayError:
            self.reconcile_open_invoices(limit)
            raise
        result = ReconciliationRun(attempts, self.reconcile_open_invoices(limit))
        if result.invoices_paid or result.invoices_refused or result.attempts:
            log.info("reconciliation run", extra=kv(attempts_settled=len(result.attempts),
                                                    invoices_checked=len(result.invoices),
                                                    invoices_paid=result.invoices_paid,
                                                    invoices_refused=result.invoices_refused))
        return result

    def reconcile_open_invoices(self, limit: int = 50) -> list[InvoiceSettlement]:
        """Ask the provider about at most ``limit`` open invoices (and invoices given up on within the
        uncollectible window) and report those it was paid for.

        A cursor walks the open invoices oldest first and wraps around, so with N candidates each one is
        looked at every ceil(N / limit) runs. Read-only at the provider: this never charges. A report's
        event id derives from (invoice, PaymentIntent), so a run repeated before the worker applied it
        publishes nothing new. A provider error ends the run (retried next tick) after moving past the
        invoice that failed, so one bad invoice cannot stall the others.
        """
        with self._engine.connect() as conn:
            candidates = self._reader.open_invoices_to_check(
                conn, limit, self._after, uncollectible_since=self._clock.now() - self._uncollectible_window)
        self._after = None if len(candidates) < limit else _keyset(candidates[-1])
        settled = []
        for invoice in candidates:
            try:
                outcome = self._gateway.lookup(invoice_id=invoice.invoice_id, provider_ref=invoice.provider_ref)
            except PaymentGatewayError:
                self._after = _keyset(invoice)
                raise
            settled.append(self._settle_invoice(invoice, outcome))
        return settled

    def _settle_invoice(self, invoice: OpenInvoice, outcome: ChargeOutcome | None) -> InvoiceSettlement:
        verdict, reason = judge_provider_answer(invoice, outcome)
        ref = outcome.provider_ref if outcome is not None and outcome.provider_ref else invoice.provider_ref
        context = kv(invoice_id=invoice.invoice_id, subscription_id=invoice.subscription_id,
                     customer_id=invoice.customer_id, provider_ref=ref, verdict=verdict.value, reason=reason,
                     due_minor=invoice.due_minor, currency=invoice.currency, in_dunning=invoice.in_dunning)
        if verdict is InvoiceVerdict.MISMATCH:
            # NOTE: money taken at the provider that does not match the invoice is a case for a human
            # (refund or manual settlement); marking the invoice paid would hide it.
            log.error("provider reports a payment that does not match the open invoice; not marked paid",
                      extra=context)
        elif verdict is InvoiceVerdict.PAID:
            now = self._clock.now()
            # NOTE: the provider's payment instant is not in the port's answer; the invoice is dated paid
            # at the billing clock's now, when we learned of it.
            payload = PaymentSucceeded(subscription_id=invoice.subscription_id, invoice_id=invoice.invoice_id,
                                       attempt_id=None, provider_ref=ref, amount_minor=invoice.due_minor,
                                       currency=invoice.currency, source="reconciliation", paid_at=now)
            self._publish(invoice.subscription_id, payload,
                          uuid.uuid5(_IDS, f"invoice/{invoice.invoice_id}/paid/{ref}"), now)
            log.info("open invoice found paid at the provider; reported to the worker", extra=context)
        else:
            log.debug("open invoice not paid at the provider", extra=context)
        return InvoiceSettlement(invoice.invoice_id, invoice.subscription_id, verdict, ref, reason)

    def run_once(self, limit: int = 50) -> list[Settlement]:
        """Look up at most ``limit`` attempts needing it and publish what the provider knows; idempotent per
        outcome. Like the open-invoice pass, a cursor walks them oldest first and wraps around, and a
        provider error ends the run after moving past the attempt that failed: one attempt whose lookup
        keeps failing cannot keep the others (and their invoices' retries) waiting."""
        with self._engine.connect() as conn:
            attempts = self._reader.needing_lookup(conn, limit, self._attempts_after)
        self._attempts_after = None if len(attempts) < limit else _attempt_keyset(attempts[-1])
        settled = []
        for attempt in attempts:
            try:
                outcome = self._gateway.lookup(idempotency_key=attempt.idempotency_key,
                                               invoice_id=attempt.invoice_id, provider_ref=attempt.provider_ref)
            except PaymentGatewayError:
                self._attempts_after = _attempt_keyset(attempt)
                raise
            settled.append(self._settle(attempt, outcome))
        return settled

    def _settle(self, attempt: sa.Row[Any], outcome: ChargeOutcome | None) -> Settlement:
        now = self._clock.now()
        payload: Payload
        if outcome is None:
            # NOTE: the provider has no record under the attempt's idempotency key: nothing was taken.
            # Reported as a failure without a decline code; the worker may then send the same request again.
            status = "not_charged"
            payload = PaymentFailed(subscription_id=attempt.subscription_id, invoice_id=attempt.invoice_id,
                                    attempt_id=attempt.attempt_id, provider_ref=attempt.provider_ref,
                                    amount_minor=attempt.amount_minor, currency=attempt.currency,
                                    message="the provider has no record of this charge; nothing was taken",
                                    source="reconciliation", failed_at=now)
        elif outcome.status is ChargeStatus.SUCCEEDED:
            status = "succeeded"
            payload = PaymentSucceeded(subscription_id=attempt.subscription_id, invoice_id=attempt.invoice_id,
                                       attempt_id=attempt.attempt_id, provider_ref=outcome.provider_ref,
                                       amount_minor=outcome.amount_minor or attempt.amount_minor,
                                       currency=outcome.currency or attempt.currency, source="reconciliation",
                                       paid_at=now)
        elif outcome.status is ChargeStatus.DECLINED:
            status = "declined"
            payload = PaymentFailed(subscription_id=attempt.subscription_id, invoice_id=attempt.invoice_id,
                                    attempt_id=attempt.attempt_id, provider_ref=outcome.provider_ref,
                                    amount_minor=attempt.amount_minor, currency=attempt.currency,
                                    decline_code=outcome.decline_code, hard_decline=outcome.hard_decline,
                                    message=outcome.message, source="reconciliation", failed_at=now)
        else:
            log.info("payment outcome still unknown at the provider",
                     extra=kv(attempt_id=attempt.attempt_id, invoice_id=attempt.invoice_id))
            return Settlement(attempt.attempt_id, attempt.invoice_id, "still_unknown")
        self._publish(attempt.subscription_id, payload, uuid.uuid5(_IDS, f"{attempt.attempt_id}/{status}"), now)
        log.info("payment attempt reconciled", extra=kv(attempt_id=attempt.attempt_id, invoice_id=attempt.invoice_id,
                                                        subscription_id=attempt.subscription_id, outcome=status))
        return Settlement(attempt.attempt_id, attempt.invoice_id, status)

    def _publish(self, key: str, payload: Payload, event_id: uuid.UUID, now: datetime) -> None:
        envelope = new_envelope(TYPE_OF[type(payload)], payload.model_dump(mode="json"), producer="dunning",
                                occurred_at=now, event_id=event_id)
        with self._engine.begin() as conn:
            add_to_outbox(conn, [(topics.PAYMENTS, key, envelope)])


def _keyset(invoice: OpenInvoice) -> tuple[datetime, str] | None:
    return (invoice.created_at, invoice.invoice_id) if invoice.created_at is not None else None


def _attempt_keyset(attempt: sa.Row[Any]) -> tuple[datetime, str]:
    return attempt.created_at, attempt.attempt_id

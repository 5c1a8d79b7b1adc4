"""The payment executor: charges finalised invoices through the PaymentGateway port, beside the consumer.

Attempts are written by the command handlers, in the transaction that finalises the invoice (or handles
`payment.retry`), *before* any provider call (rule 3). The executor:

1. claims due attempts with `FOR UPDATE SKIP LOCKED` (several executors never take the same one), marking
   them `in_flight` with a lease and counting the dispatch, in one short transaction;
2. calls the provider from a thread pool, so many charges are in flight and partition processing never
   waits for a provider (the consumer thread does not call it);
3. records each outcome on its attempt and, in the same transaction, an outbox row on `payments.v1`
   (`payment.succeeded` / `payment.failed`), which the worker applies to the invoice and subscription in
   partition order.

Unknown outcomes (timeout, connection error, provider 5xx) are never retried blind (rule 4): the attempt
becomes `unknown` with a back-off; when it is claimed again, the executor first looks the charge up and
only if the provider has no record of it sends the same request again (same idempotency key). After
`max_dispatches` such rounds the attempt is reported failed (`processing_error`, a soft decline that
dunning retries later). An attempt claimed by an executor that died mid-call is found the same way:
its lease expires, and the next claim looks it up before anything else. A charge the provider refuses
because the invoice's PaymentIntent is no longer confirmable is looked up too: paid out of band, it settles
the attempt as a success instead of a hard decline.

Pace: the gateway the worker passes is paced at the provider's rate limit (`build_paced_gateway`, one token
bucket shared by the pool's threads, each call counted: a charge is create + confirm) and retries the
provider's 429s itself; a charge still rate-limited after those retries raises `ProviderRateLimited`, a
`PaymentGatewayError`: the attempt is released for a later round, never recorded as a decline.
`concurrency` (BILLING_PAYMENT_CONCURRENCY) must cover the limit at the provider's latency.

Guards: an attempt is only charged while its invoice is open and no other attempt of the invoice is in
flight, unknown or succeeded; attempts of invoices paid or voided meanwhile are cancelled.

Every status change is a move of the domain's `PaymentAttempt` (shared/domain/payment_attempt.py: which
move may start from which status), stored by `adapters/payment_attempts.py`; this module holds no SQL of
payment attempts, only the order of the steps and the provider calls.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from services.billing_worker.adapters import payment_attempts as attempts
from services.billing_worker.adapters.outbox import add_outbox
from services.billing_worker.adapters.payment_attempts import ClaimedAttempt
from services.billing_worker.service_layer.unit_of_work import PRODUCER_NAME
from shared.adapters.payments.port import (
    INTENT_NOT_CONFIRMABLE,
    ChargeOutcome,
    ChargeRequest,
    ChargeStatus,
    PaymentGateway,
    PaymentGatewayError,
)
from shared.adapters.postgres.errors import describe
from shared.adapters.postgres.outbox import add_to_outbox
from shared.adapters.postgres.schema.billing import billing_audit_log
from shared.adapters.retry_policy import is_retryable
from shared.contracts import topics
from shared.contracts.envelope import Envelope, new_envelope
from shared.contracts.messages import PaymentFailed, PaymentSucceeded
from shared.domain.clock import Clock
from shared.domain.ids import IDS
from shared.domain.payment_attempt import AttemptStatus, PaymentAttempt
from shared.observability import kv

log = logging.getLogger("billing_worker.executor")

@dataclass(frozen=True)
class Settled:
    attempt: ClaimedAttempt
    outcome: ChargeOutcome | None  # None: the gateway could not be used; nothing was charged
    error: str | None = None


class PaymentExecutor:
    """Background task of the worker process (start/stop); `run_once` drives it synchronously in tests."""

    def __init__(self, engine: sa.Engine, gateway: PaymentGateway, clock: Clock, *, concurrency: int = 32,
                 claim_batch: int = 500, lease_s: float = 60.0, poll_s: float = 0.2, max_dispatches: int = 5,
                 unknown_backoff_s: float = 2.0, instance: str | None = None, withdraw_every_s: float = 5.0) -> None:
        self._engine = engine
        self._gateway = gateway
        self._clock = clock
        self._concurrency = concurrency
        self._claim_batch = claim_batch
        self._lease_s = lease_s
        self._poll_s = poll_s
        self._max_dispatches = max_dispatches
        self._unknown_backoff_s = unknown_backoff_s
        self._withdraw_every_s = withdraw_every_s
        self._withdrawn_at = float("-inf")  # time.monotonic() of the last sweep of attempts of closed invoices
        self._me = instance or f"executor-{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._done: queue.Queue[Settled] = queue.Queue()
        self._in_flight = 0
        self._unrecorded: list[Settled] = []  # charged, outcome not yet stored (the database was out)

    # --- lifecycle

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._pool = ThreadPoolExecutor(self._concurrency, thread_name_prefix="charge")
        self._thread = threading.Thread(target=self._loop, name="payment-executor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        try:
            self._record([*self._unrecorded, *self._drain()])
            self._unrecorded = []
        except Exception as error:  # the attempts stay in flight; their leases expire and they are looked up
            log.warning("payment outcomes not recorded at stop; the attempts will be looked up",
                        extra=kv(attempts=len(self._unrecorded), error=str(error)[:300]))

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                worked = self._round()
            except Exception as error:
                failures += 1
                if not is_retryable(error):
                    log.exception("payment executor round failed; retrying")
                elif failures == 1:  # an outage: said once when it starts and once when it ends
                    log.warning("payment executor waiting for the database or the broker",
                                extra=kv(error=describe(error)[:300], error_class=type(error).__name__))
                self._stop.wait(min(5.0, self._poll_s * 2 ** min(failures, 5)))
                continue
            if failures:
                log.info("payment executor running again", extra=kv(failed_rounds=failures))
                failures = 0
            if not worked:
                self._stop.wait(self._poll_s)

    def _round(self) -> bool:
        assert self._pool is not None
        # Outcomes whose recording failed (database out) are kept and recorded first, not dropped.
        self._unrecorded = [*self._unrecorded, *self._drain()]
        settled = self._unrecorded
        self._record(settled)
        self._unrecorded = []
        free = self._concurrency * 4 - self._in_flight
        # NOTE: the withdrawal of head attempts whose invoice was paid or voided otherwise than by its own handlers
        # (which withdraw them themselves) runs once every `withdraw_every_s`, not every round. Until then such an
        # attempt is only left pending: the claim never takes an attempt of a closed invoice.
        sweep = time.monotonic() - self._withdrawn_at >= self._withdraw_every_s
        claimed = self.claim(min(free, self._claim_batch), withdraw=sweep) if free > 0 else []
        if free > 0 and sweep:
            self._withdrawn_at = time.monotonic()
        for attempt in claimed:
            self._in_flight += 1
            self._pool.submit(self._execute_into_queue, attempt)
        return bool(claimed or settled)

    def _execute_into_queue(self, attempt: ClaimedAttempt) -> None:
        try:
            self._done.put(self.execute(attempt))
        except Exception as error:  # a bug in a gateway must not lose the attempt: it is looked up later
            log.exception("charge crashed", extra=kv(attempt_id=attempt.attempt_id))
            self._done.put(Settled(attempt, ChargeOutcome.unknown(f"executor error: {error}")))

    def _drain(self) -> list[Settled]:
        out: list[Settled] = []
        while True:
            try:
                out.append(self._done.get_nowait())
            except queue.Empty:
                break
        self._in_flight -= len(out)
        return out

    def run_once(self, limit: int = 500) -> list[Settled]:
        """Claim, charge (sequentially) and record one round; returns what was settled."""
        settled = [self.execute(a) for a in self.claim(limit)]
        self._record(settled)
        return settled

    # --- the three steps

    def claim(self, limit: int, *, withdraw: bool = True) -> list[ClaimedAttempt]:
        """Claim up to `limit` due attempts; with `withdraw`, first cancel the pending attempts of paid or voided
        invoices among the queue's head."""
        with self._engine.begin() as conn:
            return attempts.claim_due(conn, limit=limit, claimant=self._me, lease_s=self._lease_s,
                                      withdraw=withdraw)

    def execute(self, attempt: ClaimedAttempt) -> Settled:
        """Charge one attempt, looking it up first when it may already have reached the provider."""
        if attempt.payment_method_id is None:
            return Settled(attempt, ChargeOutcome.declined(
                "payment_method_missing", hard=False, message="no payment method on file"))
        try:
            if attempt.dispatch_count > 1:
                found = self._gateway.lookup(idempotency_key=attempt.idempotency_key,
                                             invoice_id=attempt.invoice_id, provider_ref=attempt.provider_ref)
                if found is not None:
                    return Settled(attempt, found)
                if attempt.dispatch_count > self._max_dispatches:
                    return Settled(attempt, ChargeOutcome.declined(
                        "processing_error", hard=False, provider_ref=attempt.provider_ref,
                        message=f"the provider never confirmed the charge in {self._max_dispatches} tries"))
            outcome = self._gateway.charge(ChargeRequest(
                invoice_id=attempt.invoice_id, amount=attempt.amount, customer_id=attempt.customer_id,
                payment_method_id=attempt.payment_method_id, idempotency_key=attempt.idempotency_key,
                provider_customer_id=attempt.provider_customer_id, provider_ref=attempt.provider_ref,
                metadata={"attempt_id": attempt.attempt_id, "subscription_id": attempt.subscription_id}))
            if outcome.status is ChargeStatus.DECLINED and outcome.decline_code == INTENT_NOT_CONFIRMABLE:
                outcome = self._settled_elsewhere(attempt, outcome)
            return Settled(attempt, outcome)
        except PaymentGatewayError as error:
            return Settled(attempt, None, str(error))

    def _settled_elsewhere(self, attempt: ClaimedAttempt, refusal: ChargeOutcome) -> ChargeOutcome:
        """The provider refused to confirm the invoice's PaymentIntent, typically because the customer paid it
        meanwhile where we did not see it (the hosted page, with the webhook lost). Recorded as a hard decline,
        that would ask the customer for a new card for an invoice already paid; so look the PaymentIntent up:
        a success that is provably this invoice's, for the amount this attempt wanted, settles the attempt
        as paid (nothing was charged twice: the provider took one payment), a PaymentIntent still processing
        is looked up again later, anything else stays the refusal."""
        ref = refusal.provider_ref or attempt.provider_ref
        try:
            found = self._gateway.lookup(invoice_id=attempt.invoice_id, provider_ref=ref)
        except PaymentGatewayError as error:
            return ChargeOutcome.unknown(f"payment intent not confirmable and its lookup failed: {error}", ref)
        if found is None or found.status is ChargeStatus.DECLINED:
            return refusal
        if found.status is ChargeStatus.UNKNOWN:
            return found
        mismatch = found.mismatch_for(invoice_id=attempt.invoice_id, provider_ref=ref,
                                      due_minor=attempt.amount.amount_minor, currency=attempt.amount.currency)
        if mismatch is not None:
            log.error("the invoice's payment intent succeeded, but not as this invoice's payment",
                      extra=kv(attempt_id=attempt.attempt_id, invoice_id=attempt.invoice_id, reason=mismatch))
            return refusal
        return dataclasses.replace(found, message="paid at the provider outside this attempt")

    def _record(self, settled: list[Settled]) -> None:
        if not settled:
            return
        now = self._clock.now()
        with self._engine.begin() as conn:
            # One savepoint for the round, not one per attempt: past 64 subtransactions PostgreSQL slows every
            # session's snapshots. Only a second success of one invoice (refused by a constraint) needs the
            # per-attempt savepoints, to single it out.
            try:
                with conn.begin_nested():
                    self._record_round(conn, settled, now)
                    recorded_together = True
            except sa.exc.IntegrityError:
                recorded_together = False
            if not recorded_together:
                for item in settled:
                    try:
                        with conn.begin_nested():
                            self._record_one(conn, item, now)
                    except sa.exc.IntegrityError:
                        self._second_success(conn, item, now)
        for item in settled:
            log.info("payment attempt settled", extra=kv(
                attempt_id=item.attempt.attempt_id, invoice_id=item.attempt.invoice_id,
                subscription_id=item.attempt.subscription_id,
                outcome=item.outcome.status.value if item.outcome else "gateway_error",
                decline_code=item.outcome.decline_code if item.outcome else None))

    def _second_success(self, conn: sa.Connection, item: Settled, now: datetime) -> None:
        """Another attempt of the invoice already succeeded: the provider charged twice. The claim guard
        makes this unreachable through one executor; if it happens anyway it is made loud, never silent."""
        log.error("second successful charge of one invoice: refund required",
                  extra=kv(attempt_id=item.attempt.attempt_id, invoice_id=item.attempt.invoice_id))
        duplicate = item.attempt.as_attempt()
        duplicate.cancel_duplicate_charge(at=now)
        attempts.cancel_duplicate_charge(conn, duplicate)
        conn.execute(sa.insert(billing_audit_log).values(
            occurred_at=now, actor=self._me, action="payment.duplicate_charge", entity_type="payment_attempt",
            entity_id=item.attempt.attempt_id, subscription_id=item.attempt.subscription_id,
            customer_id=item.attempt.customer_id,
            detail={"invoice_id": item.attempt.invoice_id,
                    "provider_ref": item.outcome.provider_ref if item.outcome else None}))

    def _record_round(self, conn: sa.Connection, settled: list[Settled], now: datetime) -> None:
        """The round's final outcomes (success, decline) in two statements whatever their number: the attempts'
        moves in one UPDATE, their `payments.v1` outbox rows in one INSERT; the others one by one. At the
        provider's rate limit a round settles hundreds of charges: one statement each would be the bottleneck."""
        final: list[tuple[ClaimedAttempt, PaymentAttempt, ChargeOutcome]] = []
        for item in settled:
            outcome = item.outcome
            if outcome is None or outcome.status is ChargeStatus.UNKNOWN:
                self._record_one(conn, item, now)
                continue
            attempt = item.attempt.as_attempt()
            self._settle(attempt, outcome, now)
            final.append((item.attempt, attempt, outcome))
        ours = attempts.record_settled(conn, [attempt for _, attempt, _ in final], claimant=self._me)
        messages: list[tuple[str, str, Envelope]] = []
        for claimed, attempt, outcome in final:
            if attempt.attempt_id not in ours:
                log.warning("attempt no longer ours; outcome left to reconciliation",
                            extra=kv(attempt_id=attempt.attempt_id, outcome=attempt.status.value))
                continue
            messages.append((topics.PAYMENTS, claimed.subscription_id,
                             self._outcome_envelope(claimed, attempt, outcome, now)))
        add_to_outbox(conn, messages)

    @staticmethod
    def _settle(attempt: PaymentAttempt, outcome: ChargeOutcome, now: datetime) -> None:
        if outcome.status is ChargeStatus.SUCCEEDED:
            attempt.succeed(at=now, provider_ref=outcome.provider_ref, message=outcome.message)
        else:
            attempt.decline(at=now, code=outcome.decline_code, hard=outcome.hard_decline,
                            provider_ref=outcome.provider_ref, message=outcome.message)

    def _record_one(self, conn: sa.Connection, item: Settled, now: datetime) -> None:
        claimed, outcome = item.attempt, item.outcome
        attempt = claimed.as_attempt()
        if outcome is None:
            attempt.release(item.error)
            attempts.record_claimed(conn, attempt, claimant=self._me,
                                    lease_s=float(int(self._unknown_backoff_s * 5)))
            return
        if outcome.status is ChargeStatus.UNKNOWN:
            attempt.lose_answer(outcome.message, outcome.provider_ref)
            backoff = self._unknown_backoff_s * (2 ** min(claimed.dispatch_count - 1, 6))
            attempts.record_claimed(conn, attempt, claimant=self._me, lease_s=backoff)
            return
        self._settle(attempt, outcome, now)
        if not attempts.record_claimed(conn, attempt, claimant=self._me):
            log.warning("attempt no longer ours; outcome left to reconciliation",
                        extra=kv(attempt_id=claimed.attempt_id, outcome=attempt.status.value))
            return
        add_outbox(conn, self._outcome_envelope(claimed, attempt, outcome, now), key=claimed.subscription_id,
                   topic=topics.PAYMENTS)

    @staticmethod
    def _outcome_envelope(claimed: ClaimedAttempt, attempt: PaymentAttempt, outcome: ChargeOutcome,
                          now: datetime) -> Envelope:
        """`payment.succeeded` / `payment.failed` for the worker to apply to the invoice in partition order."""
        payload: PaymentSucceeded | PaymentFailed
        if attempt.status is AttemptStatus.SUCCEEDED:
            payload = PaymentSucceeded(
                subscription_id=claimed.subscription_id, invoice_id=claimed.invoice_id,
                attempt_id=claimed.attempt_id, provider_ref=outcome.provider_ref,
                amount_minor=outcome.amount_minor if outcome.amount_minor is not None else claimed.amount.amount_minor,
                currency=outcome.currency or claimed.amount.currency, source="executor", paid_at=now)
            type_ = "payment.succeeded"
        else:
            payload = PaymentFailed(
                subscription_id=claimed.subscription_id, invoice_id=claimed.invoice_id,
                attempt_id=claimed.attempt_id, provider_ref=outcome.provider_ref,
                amount_minor=claimed.amount.amount_minor, currency=claimed.amount.currency,
                decline_code=outcome.decline_code, hard_decline=outcome.hard_decline,
                message=(outcome.message or "")[:500] or None, source="executor", failed_at=now)
            type_ = "payment.failed"
        return new_envelope(type_, payload.model_dump(mode="json"), producer=PRODUCER_NAME, occurred_at=now,
                            event_id=uuid.uuid5(IDS, f"{claimed.attempt_id}|{type_}"),
                            correlation_id=claimed.attempt_id)

"""The refund executor: sends the refunded part of credit notes through the gateway, after the commit.

Shaped like the payment executor: the worker writes a `refunds` row (pending, idempotency key from the credit
note) in the transaction that issues the credit note, before any provider call. This task claims due rows
(`FOR UPDATE SKIP LOCKED`, a lease), calls `gateway.refund` outside any transaction, and records the outcome on
the refund and its credit note (`adapters/credit_notes.py`, the only writer). An UNKNOWN outcome (timeout,
5xx) or a claim whose executor died (its lease expired) is sent again with the same key, which the provider
answers with the first refund: a refund is never made twice. After `max_dispatches` unknown rounds the refund
is recorded failed and logged loudly (an operator looks at the provider).
"""

from __future__ import annotations

import logging
import threading
import uuid

import sqlalchemy as sa

from services.billing_worker.adapters import credit_notes as store
from services.billing_worker.adapters.credit_notes import ClaimedRefund
from shared.adapters.payments.port import (
    PaymentGateway,
    PaymentGatewayError,
    RefundOutcome,
    RefundRequest,
    RefundStatus,
)
from shared.adapters.retry_policy import is_retryable
from shared.domain.clock import Clock
from shared.observability import kv

log = logging.getLogger("billing_worker.refunds")


class RefundExecutor:
    """Background task of the worker process (start/stop); `run_once` drives it synchronously in tests."""

    def __init__(self, engine: sa.Engine, gateway: PaymentGateway, clock: Clock, *, claim_batch: int = 100,
                 lease_s: float = 60.0, poll_s: float = 0.5, max_dispatches: int = 5,
                 unknown_backoff_s: float = 2.0) -> None:
        self._engine = engine
        self._gateway = gateway
        self._clock = clock
        self._claim_batch = claim_batch
        self._lease_s = lease_s
        self._poll_s = poll_s
        self._max_dispatches = max_dispatches
        self._unknown_backoff_s = unknown_backoff_s
        self._me = f"refunds-{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="refund-executor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                worked = bool(self.run_once())
            except Exception as error:
                if not is_retryable(error):
                    log.exception("refund executor round failed; retrying")
                self._stop.wait(min(5.0, self._poll_s * 4))
                continue
            if not worked:
                self._stop.wait(self._poll_s)

    def run_once(self) -> list[tuple[ClaimedRefund, RefundOutcome | None]]:
        """Claim due refunds, send each, record the outcomes; returns what was sent and answered."""
        with self._engine.begin() as conn:
            claimed = store.claim_refunds(conn, limit=self._claim_batch, lease_s=self._lease_s,
                                          now=self._clock.now())
        done = [(refund, self._send(refund)) for refund in claimed]
        now = self._clock.now()
        with self._engine.begin() as conn:
            for refund, outcome in done:
                if outcome is None:  # the gateway could not be used: nothing was sent; try again later
                    store.record_refund(conn, refund.refund_id, status="unknown", provider_ref=None,
                                        message="gateway unavailable", now=now,
                                        retry_after_s=self._unknown_backoff_s * 5)
                elif outcome.status is RefundStatus.UNKNOWN and refund.dispatch_count >= self._max_dispatches:
                    log.error("refund never confirmed by the provider; recorded failed",
                              extra=kv(refund_id=refund.refund_id, credit_note_id=refund.credit_note_id))
                    store.record_refund(conn, refund.refund_id, status="failed", provider_ref=outcome.provider_ref,
                                        message=f"unconfirmed after {refund.dispatch_count} tries: "
                                                f"{outcome.message}", now=now)
                else:
                    store.record_refund(conn, refund.refund_id, status=outcome.status.value,
                                        provider_ref=outcome.provider_ref,
                                        message=outcome.message if outcome.status is not RefundStatus.FAILED
                                        else f"{outcome.code}: {outcome.message}", now=now,
                                        retry_after_s=self._unknown_backoff_s * 2 ** min(refund.dispatch_count, 6))
        for refund, outcome in done:
            log.info("refund sent", extra=kv(refund_id=refund.refund_id, credit_note_id=refund.credit_note_id,
                                             invoice_id=refund.invoice_id,
                                             outcome=outcome.status.value if outcome else "gateway_error"))
        return done

    def _send(self, refund: ClaimedRefund) -> RefundOutcome | None:
        try:
            return self._gateway.refund(RefundRequest(
                credit_note_id=refund.credit_note_id, invoice_id=refund.invoice_id, amount=refund.amount,
                payment_ref=refund.payment_ref, idempotency_key=refund.idempotency_key,
                metadata={"subscription_id": refund.subscription_id, "refund_id": refund.refund_id}))
        except PaymentGatewayError as error:
            log.warning("refund not sent: gateway unavailable", extra=kv(refund_id=refund.refund_id,
                                                                          error=str(error)[:300]))
            return None

"""Reconciliation: settle payment attempts whose outcome is unknown by asking the provider, before any
dunning retry runs (DESIGN rule 4: unknown outcomes are reconciled, never retried blind).

A timeout after a charge request leaves an attempt ``unknown`` (or ``in_flight`` with an expired lease
when the worker died mid-call). The retry gate (``PaymentAttemptReader.count_unsettled``) keeps every
dunning retry of that invoice waiting; this job looks the attempt up through the ``PaymentGateway`` port
and reports what the provider knows as a ``payments.v1`` outcome (source ``reconciliation``) through the
outbox. The billing worker stays the single writer of attempts and invoices: it applies the outcome, and
its ``invoice.paid`` / ``invoice.payment_failed`` event then closes or advances the dunning case.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from shared.adapters.payments.port import ChargeOutcome, ChargeStatus, PaymentGateway
from shared.adapters.postgres.schema.billing import payment_attempts
from shared.adapters.postgres.schema.core import outbox
from shared.contracts import topics
from shared.contracts.envelope import new_envelope
from shared.contracts.messages import TYPE_OF, Payload, PaymentFailed, PaymentSucceeded
from shared.domain.clock import Clock
from shared.observability import kv

log = logging.getLogger("billing.dunning.reconciliation")

UNSETTLED: Final = ("pending", "in_flight", "unknown")
_IDS: Final = uuid.UUID("0c6b7d8e-52a1-4f0e-8d7c-3f5e9a1b2c4d")


class PaymentAttemptReader:
    """Read-only view of the worker's ``payment_attempts`` (dunning never writes them)."""

    def count_unsettled(self, conn: sa.Connection, invoice_id: str) -> int:
        """Attempts of the invoice not final yet: requested, in flight or unknown."""
        count: int = conn.execute(
            sa.select(sa.func.count()).select_from(payment_attempts)
            .where(payment_attempts.c.invoice_id == invoice_id, payment_attempts.c.status.in_(UNSETTLED))
        ).scalar_one()
        return count

    def needing_lookup(self, conn: sa.Connection, limit: int) -> list[sa.Row[Any]]:
        """Unknown outcomes, and in-flight attempts whose executor lease expired (it died mid-call)."""
        a = payment_attempts
        return list(conn.execute(
            sa.select(a).where(sa.or_(a.c.status == "unknown",
                                      sa.and_(a.c.status == "in_flight", a.c.lease_until < sa.func.now())))
            .order_by(a.c.created_at).limit(limit)).all())


@dataclass(frozen=True, slots=True)
class Settlement:
    attempt_id: str
    invoice_id: str
    status: str
    """succeeded, declined, not_charged, or still_unknown (nothing published)."""


class PaymentReconciler:
    def __init__(self, engine: sa.Engine, gateway: PaymentGateway, clock: Clock,
                 reader: PaymentAttemptReader | None = None) -> None:
        self._engine = engine
        self._gateway = gateway
        self._clock = clock
        self._reader = reader or PaymentAttemptReader()

    def run_once(self, limit: int = 50) -> list[Settlement]:
        """Look up every attempt needing it and publish what the provider knows; idempotent per outcome."""
        with self._engine.connect() as conn:
            attempts = self._reader.needing_lookup(conn, limit)
        settled = []
        for attempt in attempts:
            outcome = self._gateway.lookup(idempotency_key=attempt.idempotency_key, invoice_id=attempt.invoice_id,
                                           provider_ref=attempt.provider_ref)
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
            conn.execute(insert(outbox).values(topic=topics.PAYMENTS, message_key=key, event_id=envelope.event_id,
                                               event_type=envelope.type, envelope=envelope.model_dump(mode="json"))
                         .on_conflict_do_nothing(index_elements=[outbox.c.event_id]))

"""A simulated payment provider behind the PaymentGateway port, for the demo, the fault tests and benches.

It behaves like a provider, not like a mock: it keeps its own record of every charge keyed by the
idempotency key (a repeated key replays the first answer and never charges twice), and `lookup` answers
from that record. The record lives in memory (`InMemoryProviderRecord`, one process) or in PostgreSQL
(`PostgresProviderRecord`), which survives a `kill -9` of the worker exactly like Stripe would, so crash
tests can count the charges the "provider" actually made.

Outcomes are scripted by the payment method id, using Stripe's test payment-method names, so a demo or a
test scripts a customer simply by saving such a method (or with `script_customer`, which wins):

    pm_card_visa, pm_card_mastercard, any other pm_card_* / pm_* .... succeeds
    pm_card_chargeDeclined ........................................... declined generic_decline (soft)
    pm_card_chargeDeclinedInsufficientFunds .......................... declined insufficient_funds (soft)
    pm_card_chargeDeclinedIncorrectCvc ............................... declined incorrect_cvc (soft)
    pm_card_chargeDeclinedProcessingError ............................ declined processing_error (soft)
    pm_card_chargeDeclinedExpiredCard ................................ declined expired_card (hard)
    pm_card_chargeDeclinedFraudulent ................................. declined fraudulent (hard)
    pm_card_chargeDeclinedLostCard / ...StolenCard ................... declined lost_card / stolen_card (hard)
    pm_sim_timeout_after_success ..................................... charged, but the caller sees a timeout
    pm_sim_server_error .............................................. provider error, nothing charged
    pm_sim_decline_then_succeed ...................................... first attempt of an invoice declined
                                                                       (insufficient_funds), later ones succeed
    pm_sim_missing ................................................... no such payment method (hard)
    pm_sim_rate_limited_once ......................................... the first request of each charge is
                                                                       refused with a 429 (nothing done),
                                                                       the same request again succeeds

Like Stripe, it can limit the operations per second (`rate_limit_per_s`, BILLING_SIMULATED_GATEWAY_RATE_LIMIT_PER_S):
a charge counts as Stripe's create + confirm (2; 1 on an invoice's existing PaymentIntent), a lookup or a refund
as 1, and a request beyond the limit raises `ProviderRateLimited` with a Retry-After, having done nothing.

Like Stripe, one PaymentIntent per invoice (`intent_ref`) carries every attempt, and once it succeeded it
cannot be confirmed again (a later charge on it is refused with `payment_intent_unexpected_state`).
`pay_out_of_band` models a payment we never heard of: the customer paid the invoice's PaymentIntent on the
provider's side (hosted page, the provider's own retry) and the webhook was lost; only `lookup` sees it.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from shared.adapters.payments.port import (
    INTENT_NOT_CONFIRMABLE,
    ChargeOutcome,
    ChargeRequest,
    ProviderRateLimited,
    RefundOutcome,
    RefundRequest,
    RefundStatus,
)
from shared.adapters.payments.rate_limit import TokenBucket
from shared.adapters.postgres.schema.billing import (
    simulated_gateway_charges,
    simulated_gateway_refunds,
    simulated_gateway_scripts,
)
from shared.domain.money import Money
from shared.domain.payment_attempt import is_hard_decline


class Behaviour(StrEnum):
    SUCCEED = "succeed"
    DECLINE = "decline"
    TIMEOUT_AFTER_SUCCESS = "timeout_after_success"
    SERVER_ERROR = "server_error"
    DECLINE_THEN_SUCCEED = "decline_then_succeed"
    RATE_LIMITED_ONCE = "rate_limited_once"


@dataclass(frozen=True, slots=True)
class Script:
    behaviour: Behaviour
    decline_code: str | None = None


_DECLINES: Mapping[str, str] = {
    "pm_card_chargeDeclined": "generic_decline",
    "pm_card_chargeDeclinedInsufficientFunds": "insufficient_funds",
    "pm_card_chargeDeclinedIncorrectCvc": "incorrect_cvc",
    "pm_card_chargeDeclinedProcessingError": "processing_error",
    "pm_card_chargeDeclinedExpiredCard": "expired_card",
    "pm_card_chargeDeclinedFraudulent": "fraudulent",
    "pm_card_chargeDeclinedLostCard": "lost_card",
    "pm_card_chargeDeclinedStolenCard": "stolen_card",
    "pm_sim_missing": "resource_missing",
}


def script_of(payment_method_id: str) -> Script:
    """The scripted behaviour a payment method id stands for (see the module docstring)."""
    if payment_method_id in _DECLINES:
        return Script(Behaviour.DECLINE, _DECLINES[payment_method_id])
    if payment_method_id == "pm_sim_timeout_after_success":
        return Script(Behaviour.TIMEOUT_AFTER_SUCCESS)
    if payment_method_id == "pm_sim_server_error":
        return Script(Behaviour.SERVER_ERROR)
    if payment_method_id == "pm_sim_decline_then_succeed":
        return Script(Behaviour.DECLINE_THEN_SUCCEED, "insufficient_funds")
    if payment_method_id == "pm_sim_rate_limited_once":
        return Script(Behaviour.RATE_LIMITED_ONCE)
    return Script(Behaviour.SUCCEED)


@dataclass(frozen=True, slots=True)
class ProviderCharge:
    """The provider's own record of one request (one idempotency key)."""

    idempotency_key: str
    invoice_id: str
    customer_id: str
    payment_method_id: str
    provider_ref: str
    succeeded: bool
    amount_minor: int
    currency: str
    decline_code: str | None = None
    hard_decline: bool = False


class ProviderRecord(Protocol):
    def record(self, charge: ProviderCharge) -> ProviderCharge:
        """Store `charge` unless its key is known; return what is stored for the key (first wins)."""
        ...

    def by_key(self, idempotency_key: str) -> ProviderCharge | None: ...

    def latest_for_ref(self, provider_ref: str) -> ProviderCharge | None: ...

    def declines_for_invoice(self, invoice_id: str) -> int: ...

    def script_for_customer(self, customer_id: str) -> str | None: ...

    def before_charge(self, customer_id: str, idempotency_key: str) -> tuple[str | None, ProviderCharge | None]:
        """`script_for_customer` and `by_key` at once: what a charge reads before deciding."""
        ...

    def script_customer(self, customer_id: str, payment_method_id: str | None) -> None: ...

    def record_refund(self, refund: ProviderRefund) -> ProviderRefund:
        """Store `refund` unless its key is known; return what is stored for the key (first wins)."""
        ...

    def refunds_of(self, payment_ref: str) -> list[ProviderRefund]: ...


@dataclass(frozen=True, slots=True)
class ProviderRefund:
    """The provider's own record of one refund (one idempotency key)."""

    idempotency_key: str
    payment_ref: str
    provider_ref: str
    amount_minor: int
    currency: str


class InMemoryProviderRecord:
    """The provider's record in this process (unit tests, benchmarks, single-process demos)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[str, ProviderCharge] = {}
        self._by_ref: dict[str, ProviderCharge] = {}
        self._declines: dict[str, int] = {}
        self._scripts: dict[str, str] = {}
        self._refunds: dict[str, ProviderRefund] = {}

    def record_refund(self, refund: ProviderRefund) -> ProviderRefund:
        with self._lock:
            return self._refunds.setdefault(refund.idempotency_key, refund)

    def refunds_of(self, payment_ref: str) -> list[ProviderRefund]:
        with self._lock:
            return [r for r in self._refunds.values() if r.payment_ref == payment_ref]

    def record(self, charge: ProviderCharge) -> ProviderCharge:
        with self._lock:
            existing = self._by_key.get(charge.idempotency_key)
            if existing is not None:
                return existing
            self._by_key[charge.idempotency_key] = charge
            self._by_ref[charge.provider_ref] = charge
            if not charge.succeeded:
                self._declines[charge.invoice_id] = self._declines.get(charge.invoice_id, 0) + 1
            return charge

    def by_key(self, idempotency_key: str) -> ProviderCharge | None:
        with self._lock:
            return self._by_key.get(idempotency_key)

    def latest_for_ref(self, provider_ref: str) -> ProviderCharge | None:
        with self._lock:
            return self._by_ref.get(provider_ref)

    def declines_for_invoice(self, invoice_id: str) -> int:
        with self._lock:
            return self._declines.get(invoice_id, 0)

    def script_for_customer(self, customer_id: str) -> str | None:
        with self._lock:
            return self._scripts.get(customer_id)

    def before_charge(self, customer_id: str, idempotency_key: str) -> tuple[str | None, ProviderCharge | None]:
        with self._lock:
            return self._scripts.get(customer_id), self._by_key.get(idempotency_key)

    def script_customer(self, customer_id: str, payment_method_id: str | None) -> None:
        with self._lock:
            if payment_method_id is None:
                self._scripts.pop(customer_id, None)
            else:
                self._scripts[customer_id] = payment_method_id

    def charges(self) -> list[ProviderCharge]:
        with self._lock:
            return list(self._by_key.values())


# The charge stored, or the one stored before under its key (an idempotent replay), in one statement of a
# constant text: a billing run records hundreds of charges a second, and this stand-in for the provider runs on
# our own CPU (a SQLAlchemy insert built, compiled and followed by a select per charge was ~9 % of a worker's).
_RECORD_CHARGE = sa.text("""
WITH inserted AS (
    INSERT INTO simulated_gateway_charges (idempotency_key, invoice_id, customer_id, payment_method_id,
                                           provider_ref, succeeded, amount_minor, currency, decline_code,
                                           hard_decline)
    VALUES (:idempotency_key, :invoice_id, :customer_id, :payment_method_id, :provider_ref, :succeeded,
            :amount_minor, :currency, :decline_code, :hard_decline)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING *)
SELECT * FROM inserted
UNION ALL
SELECT * FROM simulated_gateway_charges WHERE idempotency_key = :idempotency_key
""")


# The customer's script (if any) and the charge already stored under the key (if any): one row, always.
_BEFORE_CHARGE = sa.text("""
SELECT (SELECT s.payment_method_id FROM simulated_gateway_scripts s WHERE s.customer_id = :customer_id) AS script,
       c.*
FROM (SELECT 1) AS one
LEFT JOIN simulated_gateway_charges c ON c.idempotency_key = :idempotency_key
""")


class PostgresProviderRecord:
    """The provider's record in PostgreSQL: it outlives the worker process, like a real provider."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._t = simulated_gateway_charges

    def record_refund(self, refund: ProviderRefund) -> ProviderRefund:
        r = simulated_gateway_refunds
        with self._engine.begin() as conn:
            conn.execute(insert(r).values(
                idempotency_key=refund.idempotency_key, payment_ref=refund.payment_ref,
                provider_ref=refund.provider_ref, amount_minor=refund.amount_minor, currency=refund.currency,
            ).on_conflict_do_nothing(index_elements=["idempotency_key"]))
            row = conn.execute(sa.select(r).where(r.c.idempotency_key == refund.idempotency_key)).one()
        return ProviderRefund(row.idempotency_key, row.payment_ref, row.provider_ref, row.amount_minor, row.currency)

    def refunds_of(self, payment_ref: str) -> list[ProviderRefund]:
        r = simulated_gateway_refunds
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(r).where(r.c.payment_ref == payment_ref)).all()
        return [ProviderRefund(x.idempotency_key, x.payment_ref, x.provider_ref, x.amount_minor, x.currency)
                for x in rows]

    def record(self, charge: ProviderCharge) -> ProviderCharge:
        values = {
            "idempotency_key": charge.idempotency_key, "invoice_id": charge.invoice_id,
            "customer_id": charge.customer_id, "payment_method_id": charge.payment_method_id,
            "provider_ref": charge.provider_ref, "succeeded": charge.succeeded,
            "amount_minor": charge.amount_minor, "currency": charge.currency,
            "decline_code": charge.decline_code, "hard_decline": charge.hard_decline,
        }
        with self._engine.begin() as conn:
            row = conn.execute(_RECORD_CHARGE, values).one_or_none()
            if row is None:  # a concurrent charge of this key committed after this statement's snapshot
                row = conn.execute(sa.select(self._t).where(self._t.c.idempotency_key == charge.idempotency_key)
                                   ).one()
        return _charge_of(row)

    def by_key(self, idempotency_key: str) -> ProviderCharge | None:
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(self._t).where(self._t.c.idempotency_key == idempotency_key)
                               ).one_or_none()
        return _charge_of(row) if row is not None else None

    def latest_for_ref(self, provider_ref: str) -> ProviderCharge | None:
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(self._t).where(self._t.c.provider_ref == provider_ref)
                               .order_by(self._t.c.id.desc()).limit(1)).one_or_none()
        return _charge_of(row) if row is not None else None

    def declines_for_invoice(self, invoice_id: str) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(self._t).where(
                self._t.c.invoice_id == invoice_id, self._t.c.succeeded.is_(False))).scalar_one())

    def script_for_customer(self, customer_id: str) -> str | None:
        s = simulated_gateway_scripts
        with self._engine.connect() as conn:
            return conn.execute(sa.select(s.c.payment_method_id).where(s.c.customer_id == customer_id)
                                ).scalar_one_or_none()

    def before_charge(self, customer_id: str, idempotency_key: str) -> tuple[str | None, ProviderCharge | None]:
        # One statement on one connection (a charge read the script and the key on a connection each).
        with self._engine.connect() as conn:
            row = conn.execute(_BEFORE_CHARGE, {"customer_id": customer_id, "idempotency_key": idempotency_key}).one()
        return row.script, (_charge_of(row) if row.idempotency_key is not None else None)

    def script_customer(self, customer_id: str, payment_method_id: str | None) -> None:
        s = simulated_gateway_scripts
        with self._engine.begin() as conn:
            if payment_method_id is None:
                conn.execute(sa.delete(s).where(s.c.customer_id == customer_id))
            else:
                conn.execute(insert(s).values(customer_id=customer_id, payment_method_id=payment_method_id)
                             .on_conflict_do_update(index_elements=["customer_id"],
                                                    set_={"payment_method_id": payment_method_id}))


def _charge_of(row: sa.Row[Any]) -> ProviderCharge:
    m = row._mapping
    return ProviderCharge(m["idempotency_key"], m["invoice_id"], m["customer_id"], m["payment_method_id"],
                          m["provider_ref"], m["succeeded"], m["amount_minor"], m["currency"],
                          m["decline_code"], m["hard_decline"])


class SimulatedGateway:
    """Deterministic scripted provider; see the module docstring for the scripts."""

    name = "simulated"

    def __init__(self, record: ProviderRecord | None = None, *, rate_limit_per_s: float | None = None) -> None:
        self.record: ProviderRecord = record if record is not None else InMemoryProviderRecord()
        # NOTE: one second of burst, like a per-second window: callers pacing at the limit never see a 429.
        self._limiter = TokenBucket(rate_limit_per_s) if rate_limit_per_s else None
        self._lock = threading.Lock()
        self._limited_once: set[str] = set()  # keys already refused once (pm_sim_rate_limited_once)
        self.rate_limited_answers = 0

    @staticmethod
    def calls_for_charge(request: ChargeRequest) -> int:
        """As Stripe's adapter: create + confirm, or only confirm on the invoice's existing PaymentIntent."""
        return 1 if request.provider_ref else 2

    def _admit(self, calls: int, idempotency_key: str | None = None, method: str | None = None) -> None:
        """The provider's own limiter: refuse (429, nothing done) beyond the limit or when scripted."""
        scripted = False
        if method is not None and idempotency_key is not None and \
                script_of(method).behaviour is Behaviour.RATE_LIMITED_ONCE:
            with self._lock:
                scripted = idempotency_key not in self._limited_once
                self._limited_once.add(idempotency_key)
        if scripted or (self._limiter is not None and not self._limiter.try_take(calls)):
            with self._lock:
                self.rate_limited_answers += 1
            retry_after = self._limiter.retry_after(calls) if self._limiter is not None and not scripted else 0.05
            raise ProviderRateLimited("simulated rate limit (HTTP 429): nothing was done",
                                      retry_after_s=round(retry_after, 3))

    def script_customer(self, customer_id: str, payment_method_id: str | None) -> None:
        """Make every charge of `customer_id` behave like `payment_method_id` (None: back to the method)."""
        self.record.script_customer(customer_id, payment_method_id)

    def charge(self, request: ChargeRequest) -> ChargeOutcome:
        scripted_method, known = self.record.before_charge(request.customer_id, request.idempotency_key)
        method = scripted_method or request.payment_method_id
        self._admit(self.calls_for_charge(request), request.idempotency_key, method)
        if known is not None:
            return _outcome(known)
        ref = request.provider_ref or intent_ref(request.invoice_id)
        latest = self.record.latest_for_ref(ref) if request.provider_ref is not None else None
        if latest is not None and latest.succeeded:
            # Stripe refuses to confirm a PaymentIntent that already succeeded: nothing is taken twice.
            return ChargeOutcome.declined(INTENT_NOT_CONFIRMABLE, hard=True, provider_ref=ref,
                                          message=f"payment intent {ref} has already succeeded")
        script = script_of(method)
        if script.behaviour is Behaviour.SERVER_ERROR:
            return ChargeOutcome.unknown("simulated provider error (HTTP 500): nothing was charged", ref)
        declined_code: str | None = None
        if script.behaviour is Behaviour.DECLINE:
            declined_code = script.decline_code
        elif (script.behaviour is Behaviour.DECLINE_THEN_SUCCEED
              and self.record.declines_for_invoice(request.invoice_id) == 0):
            declined_code = script.decline_code
        stored = self.record.record(ProviderCharge(
            idempotency_key=request.idempotency_key, invoice_id=request.invoice_id,
            customer_id=request.customer_id, payment_method_id=request.payment_method_id, provider_ref=ref,
            succeeded=declined_code is None, amount_minor=request.amount.amount_minor,
            currency=request.amount.currency, decline_code=declined_code,
            hard_decline=is_hard_decline(declined_code)))
        if script.behaviour is Behaviour.TIMEOUT_AFTER_SUCCESS:
            return ChargeOutcome.unknown("simulated timeout: the provider charged, the answer was lost", ref)
        return _outcome(stored)

    def lookup(self, *, idempotency_key: str | None = None, invoice_id: str,
               provider_ref: str | None = None) -> ChargeOutcome | None:
        self._admit(1)
        if idempotency_key is None:
            # The PaymentIntent as it stands now, like Stripe's retrieve (by id) or search (by invoice):
            # returned whatever invoice it belongs to; the caller checks `invoice_id` on the outcome.
            intent = self.record.latest_for_ref(provider_ref or intent_ref(invoice_id))
            return _outcome(intent) if intent is not None else None
        known = self.record.by_key(idempotency_key)
        if known is None and provider_ref is not None:
            known = self.record.latest_for_ref(provider_ref)
            if known is not None and known.invoice_id != invoice_id:
                known = None
        return _outcome(known) if known is not None else None

    def refund(self, request: RefundRequest) -> RefundOutcome:
        """Like a provider: a refund needs a succeeded payment, never gives back more than it took (over all
        refunds of that payment), and a repeated key answers the first refund."""
        self._admit(1)
        known = [r for r in self.record.refunds_of(request.payment_ref or "")
                 if r.idempotency_key == request.idempotency_key]
        if known:
            return RefundOutcome(RefundStatus.SUCCEEDED, known[0].provider_ref)
        payment = self.record.latest_for_ref(request.payment_ref) if request.payment_ref else None
        if payment is None or not payment.succeeded:
            return RefundOutcome(RefundStatus.FAILED, code="charge_not_found",
                                 message=f"no succeeded payment {request.payment_ref!r} to refund")
        refunded = sum(r.amount_minor for r in self.record.refunds_of(payment.provider_ref))
        if payment.currency != request.amount.currency or \
                refunded + request.amount.amount_minor > payment.amount_minor:
            return RefundOutcome(RefundStatus.FAILED, code="amount_too_large",
                                 message=f"refund of {request.amount} exceeds what is left of {payment.amount_minor}")
        stored = self.record.record_refund(ProviderRefund(
            request.idempotency_key, payment.provider_ref,
            "re_sim_" + hashlib.sha256(request.idempotency_key.encode()).hexdigest()[:24],
            request.amount.amount_minor, request.amount.currency))
        return RefundOutcome(RefundStatus.SUCCEEDED, stored.provider_ref)

    def pay_out_of_band(self, provider_ref: str, *, payment_method_id: str = "pm_card_visa") -> ChargeOutcome:
        """The customer pays the PaymentIntent `provider_ref` on the provider's side, for its amount, and
        no webhook reaches us. Only PaymentIntents an earlier charge created can be paid, and only once
        (ValueError otherwise, as Stripe refuses to confirm an unknown or succeeded PaymentIntent)."""
        latest = self.record.latest_for_ref(provider_ref)
        if latest is None:
            raise ValueError(f"no such payment intent: {provider_ref}")
        if latest.succeeded:
            raise ValueError(f"payment intent {provider_ref} has already succeeded")
        stored = self.record.record(ProviderCharge(
            idempotency_key=f"out_of_band:{provider_ref}", invoice_id=latest.invoice_id,
            customer_id=latest.customer_id, payment_method_id=payment_method_id, provider_ref=provider_ref,
            succeeded=True, amount_minor=latest.amount_minor, currency=latest.currency))
        return _outcome(stored)


def intent_ref(invoice_id: str) -> str:
    """The simulated PaymentIntent id of an invoice (one per invoice, like the Stripe adapter)."""
    return "pi_sim_" + hashlib.sha256(invoice_id.encode()).hexdigest()[:24]


def _outcome(charge: ProviderCharge) -> ChargeOutcome:
    if charge.succeeded:
        return ChargeOutcome.succeeded(charge.provider_ref, Money(charge.amount_minor, charge.currency),
                                       invoice_id=charge.invoice_id)
    return ChargeOutcome.declined(charge.decline_code or "generic_decline", hard=charge.hard_decline,
                                  provider_ref=charge.provider_ref,
                                  message=f"simulated decline: {charge.decline_code}")

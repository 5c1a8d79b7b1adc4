"""The one place the billing worker writes ``payment_attempts``: each statement stores a move of the domain's
``PaymentAttempt`` state machine, and takes its status condition from the domain's ``TRANSITIONS``.

Two shapes, for speed:
- moves of one attempt the caller holds as a domain object (the executor's outcome on its own claim):
  ``record_claimed`` stores ``attempt.last_transition`` with a compare-and-set on the attempt's status and
  its claimant, so an attempt taken over by another executor (its lease expired) is left to that one;
- moves decided without loading the attempt, one statement for one or many rows (a claim round, the
  withdrawal of attempts whose invoice closed, an outcome reported by a webhook or the reconciliation job):
  the same table gives their ``WHERE status IN (...)``.

Leases are measured on the database's clock (``now()``), like the claim that set them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import sqlalchemy as sa

from services.billing_worker.adapters.billing_repository import bulk_insert
from shared.adapters.postgres.match import one_of
from shared.adapters.postgres.schema.billing import (
    attempt_status_by_key,
    attempt_status_by_key_sql,
    payment_attempts,
)
from shared.domain.money import Money
from shared.domain.payment_attempt import (
    HOLDS_ITS_INVOICE,
    TRANSITIONS,
    AttemptStatus,
    PaymentAttempt,
    Transition,
    sources_of,
)


def _sql_in(statuses: frozenset[AttemptStatus]) -> str:
    return "(" + ", ".join(f"'{s.value}'" for s in sorted(statuses)) + ")"


# A statement that finds attempts by a key states its status condition through these two (see the schema's note).
def _status_in_sql(alias: str, statuses: frozenset[AttemptStatus]) -> str:
    return attempt_status_by_key_sql(f"{alias}.status IN {_sql_in(statuses)}")


def _status_in(statuses: frozenset[AttemptStatus]) -> sa.ColumnElement[bool]:
    return attempt_status_by_key(s.value for s in statuses)


_RETAKEN = sources_of(Transition.CLAIM) - {AttemptStatus.PENDING}
# Every attempt a claim may take: the statuses of the partial index ix_payment_attempts_queue (schema/billing.py).
QUEUED = sources_of(Transition.CLAIM)

# NOTE: a pending attempt carries a lease only after a release (its gateway could not be used): it waits
# that long. An in-flight or unknown one is taken again only once its lease expired, and then looked up first.
# NOTE: a claim reads the queue's head first (`_HEAD`: the oldest workable attempts, walked in created_at order on
# the partial index ix_payment_attempts_queue, at most `window` rows), then locks and moves those rows only: their
# ids are bound as an array (primary key probes) and the invoice and holder checks are per-row subqueries (index
# probes), so no plan hashes every open invoice or attempt. One statement over every workable attempt sorted every
# pending one each round: ~50 ms of PostgreSQL per round with 10,000 attempts queued, growing with the run. The
# head is a few claims wide, so rows another executor is claiming (locked, skipped) or whose invoice another
# attempt holds do not starve the claim. Whether a row is still workable is checked again on the locked row: the
# check is in the locking SELECT, which PostgreSQL re-evaluates on the row's newest version when another
# transaction changed it meanwhile (READ COMMITTED), so the UPDATE only joins the locked ids by primary key. With
# the check in the UPDATE instead, its planner walked every queued attempt through the queue index and matched
# the claimed ids against them (a stale estimate of one queued row, as after a month's close): ~15 ms a round with
# 10,000 queued, growing with the queue.
def _workable(a: str) -> str:
    return (f"({a}.status = '{AttemptStatus.PENDING.value}' AND ({a}.lease_until IS NULL OR {a}.lease_until < now())"
            f"\n           OR {a}.status IN {_sql_in(_RETAKEN)} AND {a}.lease_until < now())")


_HEAD = sa.text(f"""
SELECT a.attempt_id
FROM payment_attempts a
WHERE a.status IN {_sql_in(QUEUED)}
  AND {_workable("a")}
ORDER BY a.created_at
LIMIT :window OFFSET :skip
""")
_CLAIM = sa.text(f"""
WITH due AS (
    SELECT a.attempt_id
    FROM payment_attempts a
    WHERE a.attempt_id = ANY(CAST(:ids AS text[]))
      AND {attempt_status_by_key_sql(_workable("a"))}
      AND (SELECT i.status FROM invoices i WHERE i.invoice_id = a.invoice_id) IN ('open', 'uncollectible')
      AND (SELECT count(*) FROM payment_attempts b
           WHERE b.invoice_id = a.invoice_id AND b.attempt_id <> a.attempt_id
             AND b.status IN {_sql_in(HOLDS_ITS_INVOICE)}) = 0
    ORDER BY a.created_at
    LIMIT :limit
    FOR UPDATE OF a SKIP LOCKED
)
UPDATE payment_attempts AS p
SET status = '{AttemptStatus.IN_FLIGHT.value}', claimed_by = :me,
    lease_until = now() + make_interval(secs => :lease),
    dispatch_count = p.dispatch_count + 1, dispatched_at = coalesce(p.dispatched_at, now())
FROM due
WHERE p.attempt_id = due.attempt_id
RETURNING p.attempt_id, p.invoice_id, p.attempt_no, p.subscription_id, p.customer_id, p.amount_minor, p.currency,
          p.payment_method_id, p.idempotency_key, p.dispatch_count, p.provider_ref, p.requested_at, p.reason,
          (SELECT c.stripe_customer_id FROM customers c WHERE c.customer_id = p.customer_id) AS provider_customer_id,
          (SELECT b.provider_ref FROM payment_attempts b WHERE b.invoice_id = p.invoice_id
             AND b.provider_ref IS NOT NULL ORDER BY b.attempt_no DESC LIMIT 1) AS invoice_provider_ref
""")

# NOTE: only among the queue head a claim just read (`:ids`), not every pending attempt: joining all of them with
# their invoices cost ~300-425 ms of PostgreSQL a sweep with 100,000 queued after a billing run (every 5 s, growing
# with the queue, while nothing was to withdraw). A paid invoice withdraws its own attempts when it is stored
# (`withdraw_pending_of_invoices`), void and write-off do too; this catches what reached the head otherwise.
_WITHDRAW_OF_CLOSED_INVOICES = sa.text(f"""
UPDATE payment_attempts a SET status = '{AttemptStatus.CANCELLED.value}', completed_at = now(), lease_until = NULL
FROM invoices i
WHERE a.attempt_id = ANY(CAST(:ids AS text[])) AND i.invoice_id = a.invoice_id
  AND {_status_in_sql("a", sources_of(Transition.WITHDRAW))} AND i.status IN ('paid', 'void')
""")


@dataclass(frozen=True)
class ClaimedAttempt:
    """An attempt this executor just claimed, with what the provider call needs beside it.

    ``provider_ref`` is the provider object to confirm: the attempt's own, else the latest one of its
    invoice (every attempt of an invoice confirms the same PaymentIntent); ``own_provider_ref`` is the
    attempt's alone."""

    attempt_id: str
    invoice_id: str
    attempt_no: int
    subscription_id: str
    customer_id: str
    amount: Money
    payment_method_id: str | None
    idempotency_key: str
    dispatch_count: int
    provider_ref: str | None
    provider_customer_id: str | None
    own_provider_ref: str | None
    requested_at: datetime
    reason: str

    @classmethod
    def of(cls, row: Any) -> ClaimedAttempt:
        return cls(row.attempt_id, row.invoice_id, row.attempt_no, row.subscription_id, row.customer_id,
                   Money(row.amount_minor, row.currency), row.payment_method_id, row.idempotency_key,
                   row.dispatch_count, row.provider_ref or row.invoice_provider_ref, row.provider_customer_id,
                   row.provider_ref, row.requested_at, row.reason)

    def as_attempt(self) -> PaymentAttempt:
        """The domain's view of the claimed row: IN_FLIGHT, with the dispatch just counted."""
        return PaymentAttempt(
            attempt_id=self.attempt_id, invoice_id=self.invoice_id, attempt_no=self.attempt_no,
            subscription_id=self.subscription_id, customer_id=self.customer_id, amount=self.amount,
            payment_method_id=self.payment_method_id, idempotency_key=self.idempotency_key,
            requested_at=self.requested_at, reason=self.reason,
            status=AttemptStatus.IN_FLIGHT, dispatch_count=self.dispatch_count, provider_ref=self.own_provider_ref)


# ------------------------------------------------------------------------------------------- requests


class RequestedAttempt(Protocol):
    """What a new attempt row is made of (``PaymentAttempt.request`` gives one)."""

    @property
    def attempt_id(self) -> str: ...
    @property
    def invoice_id(self) -> str: ...
    @property
    def attempt_no(self) -> int: ...
    @property
    def subscription_id(self) -> str: ...
    @property
    def customer_id(self) -> str: ...
    @property
    def amount(self) -> Money: ...
    @property
    def payment_method_id(self) -> str | None: ...
    @property
    def requested_at(self) -> datetime: ...
    @property
    def reason(self) -> str: ...


def insert_requested(conn: sa.Connection, attempts: Sequence[RequestedAttempt]) -> int:
    """Write attempts PENDING *before* any provider call; the idempotency key is the attempt id. Returns how
    many were new (an attempt already written is left as it is)."""
    if not attempts:
        return 0
    rows = [{"attempt_id": a.attempt_id, "invoice_id": a.invoice_id, "attempt_no": a.attempt_no,
             "subscription_id": a.subscription_id, "customer_id": a.customer_id,
             "amount_minor": a.amount.amount_minor, "currency": a.amount.currency,
             "payment_method_id": a.payment_method_id, "idempotency_key": a.attempt_id,
             "status": AttemptStatus.PENDING.value, "reason": a.reason, "requested_at": a.requested_at}
            for a in attempts]
    return len(bulk_insert(conn, payment_attempts, rows, ignore_conflicts_on=(), returning="attempt_id"))


def detach_pending_payment_method(conn: sa.Connection, subscription_id: str) -> int:
    """Drop the payment method of the subscription's attempts not sent yet (``forget_payment_method``: only
    PENDING ones); returns how many."""
    a = payment_attempts.c
    return conn.execute(sa.update(payment_attempts).where(
        a.subscription_id == subscription_id, a.status == AttemptStatus.PENDING.value,
        a.payment_method_id.is_not(None)).values(payment_method_id=None)).rowcount


# ------------------------------------------------------------------------------------ the executor's moves


def claim_due(conn: sa.Connection, *, limit: int, claimant: str, lease_s: float,
              withdraw: bool = False) -> list[ClaimedAttempt]:
    """Claim up to `limit` due attempts of open (or uncollectible: an operator's retry) invoices for
    `claimant` (``PaymentAttempt.claim`` on each, ``FOR UPDATE SKIP LOCKED``: several executors never take the
    same one), under a lease of `lease_s`. With `withdraw`, the pending attempts of paid or voided invoices among
    the rows walked are withdrawn first (the claim itself only passes them by)."""
    window, skip = limit + 32, 0  # a little wider than the claim: rows another executor is taking are skipped
    while True:
        head = list(conn.execute(_HEAD, {"window": window, "skip": skip}).scalars())
        if withdraw and head:
            conn.execute(_WITHDRAW_OF_CLOSED_INVOICES, {"ids": head})
        rows = conn.execute(_CLAIM, {"ids": head, "limit": limit, "me": claimant, "lease": lease_s}).all() \
            if head else []
        if rows or len(head) < window:
            return [ClaimedAttempt.of(r) for r in rows]
        skip += window  # a whole head none of which could be taken (held, locked): look further down the queue


def record_claimed(conn: sa.Connection, attempt: PaymentAttempt, *, claimant: str,
                   lease_s: float | None = None) -> bool:
    """Store the move `claimant` just made on the attempt it claimed (release, lost answer, success,
    decline). Compare-and-set: the row must still be `claimant`'s and in a status the move starts from.
    `lease_s` is how long a released or unknown attempt waits before it is claimed again. False when the
    row was not ours any more (its lease expired and another executor took it)."""
    a = payment_attempts.c
    transition = _last_transition(attempt)
    mine = sa.and_(a.attempt_id == attempt.attempt_id, a.claimed_by == claimant, _status_in(sources_of(transition)))
    return bool(conn.execute(sa.update(payment_attempts).where(mine).values(
        _values_of(attempt, transition, lease_s))).rowcount)


# NOTE: SUCCEED and DECLINE start from the same statuses in the domain's table (IN_FLIGHT), so one status
# condition (their union) serves the whole list. The round's rows go as arrays: the statement's text is the same
# for every round, so it is compiled once and psycopg prepares it (a VALUES list rendered the rows as literals and
# was compiled anew each round, ~40 % of the executor's CPU in a billing run).
_RECORD_SETTLED = sa.text(f"""
UPDATE payment_attempts a
SET status = v.status, provider_ref = COALESCE(v.provider_ref, a.provider_ref), decline_code = v.decline_code,
    hard_decline = v.hard_decline, error_message = v.error_message, completed_at = v.completed_at,
    lease_until = NULL
FROM unnest(CAST(:ids AS text[]), CAST(:statuses AS text[]), CAST(:refs AS text[]), CAST(:codes AS text[]),
            CAST(:hard AS boolean[]), CAST(:errors AS text[]), CAST(:completed AS timestamptz[]))
     AS v(attempt_id, status, provider_ref, decline_code, hard_decline, error_message, completed_at)
WHERE a.attempt_id = v.attempt_id AND a.claimed_by = :claimant
  AND {_status_in_sql("a", sources_of(Transition.SUCCEED) | sources_of(Transition.DECLINE))}
RETURNING a.attempt_id""")


def record_settled(conn: sa.Connection, attempts: Sequence[PaymentAttempt], *, claimant: str) -> set[str]:
    """Store the final moves (``succeed`` / ``decline``) `claimant` made on attempts it claimed, in ONE
    statement for the whole round (an UPDATE from the round's values as arrays), with ``record_claimed``'s
    compare-and-set on each row's status and claimant. Returns the ids stored; the others were not ours any
    more. A second success of one invoice violates the one-success index and raises for the whole statement
    (the caller then stores the round attempt by attempt to single it out)."""
    if not attempts:
        return set()
    transitions = {_last_transition(x) for x in attempts}
    if not transitions <= {Transition.SUCCEED, Transition.DECLINE}:
        moves = sorted(t.value for t in transitions)
        raise ValueError(f"record_settled stores succeed/decline moves only, not {moves}")
    stored = conn.execute(_RECORD_SETTLED, {
        "claimant": claimant, "ids": [x.attempt_id for x in attempts], "statuses": [x.status.value for x in attempts],
        "refs": [x.provider_ref for x in attempts], "codes": [x.decline_code for x in attempts],
        "hard": [x.hard_decline for x in attempts], "errors": [x.error_message for x in attempts],
        "completed": [x.completed_at for x in attempts]}).scalars().all()
    return set(stored)


def cancel_duplicate_charge(conn: sa.Connection, attempt: PaymentAttempt) -> bool:
    """Store ``PaymentAttempt.cancel_duplicate_charge``: the provider charged an invoice another attempt had
    already paid (the caller audits it for a refund)."""
    a = payment_attempts.c
    transition = _last_transition(attempt)
    if transition is not Transition.CANCEL_DUPLICATE_CHARGE:
        raise ValueError(f"cancel_duplicate_charge stores that move only, not {transition.value}")
    return bool(conn.execute(sa.update(payment_attempts).where(
        a.attempt_id == attempt.attempt_id, _status_in(sources_of(transition)))
        .values(_values_of(attempt, transition, None))).rowcount)


def _last_transition(attempt: PaymentAttempt) -> Transition:
    if attempt.last_transition is None:
        raise ValueError(f"payment attempt {attempt.attempt_id} has made no move to store")
    return attempt.last_transition


def _lease(seconds: float) -> sa.ColumnElement[Any]:
    return sa.func.now() + sa.text(f"interval '{seconds:.3f} seconds'")


def _values_of(attempt: PaymentAttempt, transition: Transition, lease_s: float | None) -> dict[str, Any]:
    """The columns a move changes (relative where a concurrent re-claim by the same executor could
    have moved them: the dispatch count)."""
    a = payment_attempts.c
    status = attempt.status.value
    if transition is Transition.RELEASE:
        return {"status": status, "dispatch_count": a.dispatch_count - 1, "error_message": attempt.error_message,
                "lease_until": _lease(lease_s or 0.0)}
    if transition is Transition.LOSE_ANSWER:
        return {"status": status, "error_message": attempt.error_message,
                "provider_ref": sa.func.coalesce(attempt.provider_ref, a.provider_ref),
                "lease_until": _lease(lease_s or 0.0)}
    if transition in (Transition.SUCCEED, Transition.DECLINE):
        return {"status": status, "provider_ref": sa.func.coalesce(attempt.provider_ref, a.provider_ref),
                "decline_code": attempt.decline_code, "hard_decline": attempt.hard_decline,
                "error_message": attempt.error_message, "completed_at": attempt.completed_at, "lease_until": None}
    if transition is Transition.CANCEL_DUPLICATE_CHARGE:
        return {"status": status, "completed_at": attempt.completed_at, "lease_until": None,
                "error_message": attempt.error_message}
    raise ValueError(f"{transition.value} is not a move of the attempt's claimant")


# ------------------------------------------------------------------------------- the command handlers' moves


def accept_reported_outcome(conn: sa.Connection, attempt_id: str, *, succeeded: bool, provider_ref: str | None,
                            decline_code: str | None = None, hard_decline: bool = False,
                            at: datetime) -> bool:
    """Record an outcome someone else reported (webhook, reconciliation) on an attempt not settled yet
    (``accept_reported_success`` / ``accept_reported_failure``). A success is refused while another attempt
    of the invoice succeeded (one success per invoice). False when the attempt was already settled."""
    a = payment_attempts.c
    transition = Transition.ACCEPT_REPORTED_SUCCESS if succeeded else Transition.ACCEPT_REPORTED_FAILURE
    condition: sa.ColumnElement[bool] = _status_in(sources_of(transition))
    if succeeded:
        others = sa.select(a.attempt_id).where(
            a.invoice_id == sa.select(a.invoice_id).where(a.attempt_id == attempt_id).scalar_subquery(),
            a.status == AttemptStatus.SUCCEEDED.value)
        condition = sa.and_(condition, ~sa.exists(others))
    done = conn.execute(sa.update(payment_attempts).where(a.attempt_id == attempt_id, condition).values(
        status=AttemptStatus.SUCCEEDED.value if succeeded else AttemptStatus.DECLINED.value,
        provider_ref=sa.func.coalesce(provider_ref, a.provider_ref),
        decline_code=None if succeeded else decline_code, hard_decline=False if succeeded else hard_decline,
        completed_at=at))
    return bool(done.rowcount)


def settled_for_good(transition: Transition, status: str) -> bool:
    """True when an attempt in `status` can never again be moved by `transition`: neither `status` nor any status
    reachable from it is among the transition's sources (succeeded and cancelled are final; declined only moves
    on to succeeded). Such a status read earlier in the transaction is still the attempt's."""
    seen: set[AttemptStatus] = set()
    frontier = {AttemptStatus(status)}
    while frontier:
        current = frontier.pop()
        if current in sources_of(transition):
            return False
        seen.add(current)
        frontier |= {m.target for m in TRANSITIONS.values() if current in m.sources} - seen
    return True


def statuses_of(conn: sa.Connection, attempt_ids: Sequence[str]) -> dict[str, str]:
    """attempt id -> status, for those of `attempt_ids` that exist, in one read."""
    if not attempt_ids:
        return {}
    a = payment_attempts.c
    return {str(i): str(s) for i, s in conn.execute(sa.select(a.attempt_id, a.status).where(
        one_of(a.attempt_id, sorted(set(attempt_ids))))).all()}


def withdraw_pending_of_invoice(conn: sa.Connection, invoice_id: str, at: datetime) -> int:
    """Withdraw the invoice's attempts not sent yet (voided, written off); returns how many."""
    return withdraw_pending_of_invoices(conn, [invoice_id], at)


def withdraw_pending_of_invoices(conn: sa.Connection, invoice_ids: Sequence[str], at: datetime) -> int:
    """Withdraw the attempts not sent yet of invoices that no longer need them, in one statement (probes of the
    (invoice_id, attempt_no) key); returns how many."""
    if not invoice_ids:
        return 0
    a = payment_attempts.c
    return conn.execute(sa.update(payment_attempts).where(
        one_of(a.invoice_id, invoice_ids), _status_in(sources_of(Transition.WITHDRAW)))
        .values(status=AttemptStatus.CANCELLED.value, completed_at=at)).rowcount


def attempt_no_of(conn: sa.Connection, attempt_id: str | None) -> int | None:
    """The attempt's number within its invoice (None when unknown)."""
    if attempt_id is None:
        return None
    value = conn.execute(sa.select(payment_attempts.c.attempt_no)
                         .where(payment_attempts.c.attempt_id == attempt_id)).scalar_one_or_none()
    return int(value) if value is not None else None


def numbers_of_invoice(conn: sa.Connection, invoice_id: str) -> dict[int, str]:
    """The invoice's attempts: attempt number -> status."""
    a = payment_attempts.c
    return {int(n): str(s) for n, s in conn.execute(sa.select(a.attempt_no, a.status).where(
        a.invoice_id == invoice_id)).all()}

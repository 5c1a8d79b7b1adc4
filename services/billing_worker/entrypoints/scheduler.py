"""The billing scheduler: turns the billing clock into commands, so time is just another message.

Each tick reads the billing clock (the simulated `DatabaseClock`, or the system clock) and, set-based,
finds what fell due: period ends of live subscriptions (after `BILLING_PERIOD_CLOSE_GRACE_S`, so usage
still in the Kafka backlog at the period end reaches its own invoice), trial ends, and expiries of credit
grants that nothing has expired yet. Each becomes one command on `commands.v1` keyed by subscription_id
(`period.close`, `trial.end`, `credits.expire`), carrying the instant it is about, so the worker applies
it in the subscription's order like any other command. A `period.close` also carries the invoice's grace (the
customer's `invoice_grace_seconds`, else the issuer's; `shared.domain.invoice_grace`), and a draft invoice
whose grace has ended becomes an `invoice.finalize`.

Exactly one scheduler is active per database schema: it holds a session-level PostgreSQL advisory lock on
a connection of its own; the others wait for it (a crashed holder's session ends and frees the lock).

Idempotent: a command's event id is derived from (subscription, kind, due instant), and what was produced is
remembered in `scheduled_commands` after the broker acknowledged it. A crash between the two re-produces
the same event ids, which the worker treats as the same command (a close of a period that is no longer
current is ignored). Cost per tick: three indexed queries, one batched produce, one insert per batch.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from shared.adapters.kafka.producer import KafkaProducer, OutgoingMessage
from shared.adapters.postgres.errors import is_database_error, is_transient
from shared.adapters.postgres.match import one_of
from shared.adapters.postgres.schema.core import customers
from shared.config import Settings
from shared.contracts import topics
from shared.contracts.envelope import new_envelope
from shared.contracts.messages import ClosePeriod, EndTrial, ExpireCredits, FinalizeInvoice, Payload
from shared.domain.clock import Clock
from shared.domain.ids import IDS
from shared.domain.invoice_grace import invoice_grace_seconds
from shared.domain.subscription import CLOSABLE_STATUSES
from shared.errors import InfrastructureError
from shared.observability import kv

log = logging.getLogger("billing_worker.scheduler")

PRODUCER_NAME = "billing-scheduler"

# The instant before every period end: a sweep from here looks at all of them.
BEGINNING = datetime(1970, 1, 1, tzinfo=UTC)

# NOTE: wall-clock time; how long a declined charge may wait for dunning to open its case (dunning's
# consumer lag) before the period close goes ahead without it.
DUNNING_PICKUP = timedelta(seconds=60)

# Which subscriptions a close is due for: the domain's CLOSABLE_STATUSES, rendered into the statement as
# literals (`literal_execute`): the same text as a written-out list, so PostgreSQL can still use the partial
# index ix_subscriptions_due_period_end (its predicate is that list) in a prepared, generic plan.
# A period close is held back while something due at an earlier billing instant has not taken effect for
# that subscription (time order: dunning's give-up on day 14 must cancel a subscription before the close on
# day 31 bills it again, whatever the size of a clock jump). Read-only and narrow, on purpose:
#   - an open invoice has a payment attempt decided before the period end that is still unsettled (the
#     charge is in flight or its outcome unknown), or declined while dunning has no case for it yet (for
#     at most DUNNING_PICKUP of wall-clock time after the charge was sent: dunning opens the case within
#     seconds, and a dunning service that is down or not deployed must not stop billing);
#   - dunning has an open case whose position (`dunning_cases.next_wake_at`, the earliest billing instant
#     it has something left to do, maintained by dunning) is at or before the instant of the close;
#   - a command dunning decided for the subscription (a retry, the give-up) is still in the outbox: it
#     must reach commands.v1 before the close does, so the worker applies it first.
# Only subscriptions already due are looked at, each through indexes (open invoices by subscription, attempts
# and cases by invoice, cases by subscription); a normal month's close finds nothing in any of them.
# One page of a sweep (`Scheduler.tick`): the next `limit` due period ends after (`after_at`, `after_id`) that
# were not emitted yet, each with whether something holds it back (`held`). Every check is a probe of an index
# per candidate (`OFFSET 0` keeps PostgreSQL from turning the checks into joins), and the holds are probed only
# for the page: planned as joins, with statistics taken before a month's close (no open invoice, nothing
# scheduled), the checks became nested loops over every open invoice and every unpublished outbox row for each
# due subscription, 10-44 s per sweep in a 100k benchmark run while the close made those sets grow.
_DUE_PERIOD_ENDS = sa.text("""
WITH candidates AS MATERIALIZED (
    SELECT s.subscription_id, s.customer_id, s.current_period_end AS due_at
    FROM subscriptions s
    WHERE s.status IN :closable AND s.current_period_end <= :close_before AND s.current_period_end >= :after_at
      AND (s.current_period_end, s.subscription_id) > (:after_at, :after_id)
      AND NOT EXISTS (SELECT 1 FROM scheduled_commands c WHERE c.subscription_id = s.subscription_id
                      AND c.kind = 'period.close' AND c.due_at = s.current_period_end OFFSET 0)
    ORDER BY s.current_period_end, s.subscription_id
    LIMIT :limit
)
SELECT s.subscription_id, s.customer_id, s.due_at,
       EXISTS (SELECT 1 FROM invoices i JOIN payment_attempts a ON a.invoice_id = i.invoice_id
               WHERE i.subscription_id = s.subscription_id AND i.status = 'open'
                 AND a.requested_at <= s.due_at
                 AND (a.status IN ('pending', 'in_flight', 'unknown')
                      OR (a.status = 'declined'
                          AND coalesce(a.dispatched_at, a.created_at) > now() - :dunning_pickup
                          AND NOT EXISTS (SELECT 1 FROM dunning_cases d0 WHERE d0.invoice_id = i.invoice_id)))
               OFFSET 0)
       OR EXISTS (SELECT 1 FROM dunning_cases d WHERE d.subscription_id = s.subscription_id
                  AND d.status = 'open' AND d.next_wake_at <= s.due_at + :grace OFFSET 0)
       OR s.subscription_id IN (SELECT o.message_key FROM outbox o WHERE o.published_at IS NULL
                                AND o.topic = :commands_topic AND o.event_type IN ('payment.retry', 'dunning.give_up'))
       AS held
FROM candidates s
ORDER BY s.due_at, s.subscription_id
""").bindparams(sa.bindparam("closable", [status.value for status in sorted(CLOSABLE_STATUSES)], expanding=True,
                             literal_execute=True))

# A trial end closes the trial's usage like a period close (rating.end_trial), so it waits the same grace.
_DUE_TRIAL_ENDS = sa.text("""
SELECT s.subscription_id, s.customer_id, s.trial_end AS due_at
FROM subscriptions s
WHERE s.status = 'trialing' AND s.trial_end <= :close_before
  AND NOT EXISTS (SELECT 1 FROM scheduled_commands c WHERE c.subscription_id = s.subscription_id
                  AND c.kind = 'trial.end' AND c.due_at = s.trial_end)
ORDER BY s.trial_end, s.subscription_id
LIMIT :limit
""")

# Grants past their expiry that the worker has not settled yet. Plan-included credits are left out: they
# expire with their period, and the period close settles them in its own transaction. A trial's credits are
# held back while the subscription is still trialing: its trial end rates the trial's usage against them
# first (after the close grace) and settles them in its own transaction.
_DUE_EXPIRIES = sa.text("""
SELECT g.subscription_id, min(g.customer_id) AS customer_id, g.expires_at AS due_at
FROM credit_grants g
WHERE g.expires_at <= :now AND g.settled_at IS NULL AND g.source <> 'plan_included'
  AND NOT (g.source = 'trial' AND EXISTS (SELECT 1 FROM subscriptions s
                                          WHERE s.subscription_id = g.subscription_id AND s.status = 'trialing'))
  AND NOT EXISTS (SELECT 1 FROM scheduled_commands c WHERE c.subscription_id = g.subscription_id
                  AND c.kind = 'credits.expire' AND c.due_at = g.expires_at)
GROUP BY g.subscription_id, g.expires_at
ORDER BY g.expires_at, g.subscription_id
LIMIT :limit
""")


# Drafts whose grace has ended (the worker stored `finalizes_at` with the draft: the grace is a snapshot
# taken at the close). Few rows: only invoices in their grace, through the partial index on drafts.
_DUE_DRAFTS = sa.text("""
SELECT i.subscription_id, i.customer_id, i.finalizes_at AS due_at, i.invoice_id
FROM invoices i
WHERE i.status = 'draft' AND i.finalizes_at <= :now
  AND NOT EXISTS (SELECT 1 FROM scheduled_commands c WHERE c.subscription_id = i.subscription_id
                  AND c.kind = 'invoice.finalize' AND c.due_at = i.finalizes_at)
ORDER BY i.finalizes_at, i.invoice_id
LIMIT :limit
""")


# What was produced, remembered in one statement (a row per command sent one at a time cost a round trip each).
_REMEMBER_EMITTED = sa.text("""
INSERT INTO scheduled_commands (subscription_id, kind, due_at, event_id, emitted_at)
SELECT s, k, d, e, :at
FROM unnest(CAST(:subs AS text[]), CAST(:kinds AS text[]), CAST(:dues AS timestamptz[]), CAST(:ids AS uuid[]))
     AS v(s, k, d, e)
ON CONFLICT DO NOTHING
""")


@dataclass(frozen=True)
class Due:
    kind: str
    subscription_id: str
    customer_id: str
    due_at: datetime
    finalize_after_seconds: int | None = None  # period.close: the invoice's grace, a snapshot (None: none)
    invoice_id: str | None = None  # invoice.finalize: the draft

    @functools.cached_property  # twice per emitted command (its envelope and its row), 10,000s per month's close
    def event_id(self) -> uuid.UUID:
        return uuid.uuid5(IDS, f"{self.subscription_id}|{self.kind}|{self.due_at.isoformat()}")

    def payload(self) -> Payload:
        if self.kind == "period.close":
            return ClosePeriod(subscription_id=self.subscription_id, customer_id=self.customer_id,
                               period_end=self.due_at, finalize_after_seconds=self.finalize_after_seconds)
        if self.kind == "invoice.finalize":
            return FinalizeInvoice(subscription_id=self.subscription_id, customer_id=self.customer_id,
                                   invoice_id=str(self.invoice_id))
        if self.kind == "trial.end":
            return EndTrial(subscription_id=self.subscription_id, customer_id=self.customer_id,
                            trial_end=self.due_at)
        return ExpireCredits(subscription_id=self.subscription_id, customer_id=self.customer_id, at=self.due_at)


def _is_outage(error: BaseException) -> bool:
    """PostgreSQL unreachable (by SQLSTATE, the worker's rule) or Kafka not acknowledging: the next tick retries."""
    return isinstance(error, InfrastructureError) or (is_database_error(error) and is_transient(error))


def lock_key(settings: Settings) -> int:
    """The advisory lock id of this environment's scheduler (one per database schema)."""
    digest = hashlib.blake2b(f"billing-scheduler|{settings.database_schema or 'public'}".encode(),
                             digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class Scheduler:
    """Background task of the worker process; only the instance holding the advisory lock ticks."""

    def __init__(self, settings: Settings, engine: sa.Engine, clock: Clock, *,
                 producer: KafkaProducer | None = None, batch: int = 20_000,
                 interval_s: float | None = None, full_sweep_s: float | None = None) -> None:
        self._settings = settings
        self._engine = engine
        self._clock = clock
        self._producer = producer
        self._batch = batch
        self._interval_s = settings.scheduler_interval_s if interval_s is None else interval_s
        self._close_grace = timedelta(seconds=settings.period_close_grace_s)
        self._invoice_grace = settings.invoice_grace_seconds
        self._key = lock_key(settings)
        self._full_sweep_s = settings.scheduler_full_sweep_s if full_sweep_s is None else full_sweep_s
        self._swept_through: datetime | None = None  # period ends up to here were swept (None: full sweep next)
        self._full_swept_at = 0.0
        self._position: tuple[datetime, str] | None = None  # where the sweep under way goes on (None: none is)
        self._sweep_started: float | None = None  # when the full sweep under way started (None: not a full one)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock_conn: sa.Connection | None = None

    # --- lifecycle

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="billing-scheduler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
        self._release()
        if self._producer is not None:
            self._producer.close()
            self._producer = None

    def _loop(self) -> None:
        down_since: float | None = None
        while not self._stop.is_set():
            try:
                if self.acquire():
                    while (self.tick() >= self._batch or self._position is not None) and not self._stop.is_set():
                        pass  # a backlog, or a sweep under way: keep going without waiting
            except Exception as exc:
                self._release()
                if not _is_outage(exc):
                    log.exception("scheduler tick failed; retrying")
                elif down_since is None:  # an outage: one line when it starts, one when it is over
                    down_since = time.monotonic()
                    log.warning("scheduler waits for PostgreSQL/Kafka",
                                extra=kv(error=f"{type(exc).__name__}: {exc}"[:500]))
            else:
                if down_since is not None:
                    log.warning("scheduler back", extra=kv(down_s=round(time.monotonic() - down_since, 1)))
                    down_since = None
            self._stop.wait(self._interval_s)

    # --- leadership

    def acquire(self) -> bool:
        """True while this instance holds the scheduler lock (taken on a dedicated session)."""
        if self._lock_conn is not None:
            try:
                self._lock_conn.execute(sa.text("SELECT 1"))
                # the check's transaction ends here: the lock is the session's, and a session left idle in a
                # transaction while this instance leads (hours) is what idle_in_transaction_session_timeout ends
                self._lock_conn.commit()
                return True
            except sa.exc.SQLAlchemyError:
                self._release()
        conn = self._engine.connect()
        got = bool(conn.execute(sa.select(sa.func.pg_try_advisory_lock(self._key))).scalar_one())
        conn.commit()
        if not got:
            conn.close()
            return False
        self._lock_conn = conn
        log.info("scheduler lock acquired", extra=kv(lock_key=self._key))
        return True

    def _release(self) -> None:
        self._position = self._swept_through = None  # whoever leads next starts with a full sweep
        if self._lock_conn is not None:
            try:
                self._lock_conn.execute(sa.select(sa.func.pg_advisory_unlock(self._key)))
                self._lock_conn.commit()
            except sa.exc.SQLAlchemyError:
                pass  # the session is gone (an outage ends it, and the lock with it): nothing to release
            finally:
                self._lock_conn.close()
                self._lock_conn = None

    # --- work

    def due(self, now: datetime, limit: int, *, after: tuple[datetime, str] = (BEGINNING, "")) -> list[Due]:
        """What is due at `now` and may go out, at most `limit` of each kind; of the period ends, only those after
        `after` (instant, subscription id; the default: all of them)."""
        return self._due(now, limit, after)[0]

    def _due(self, now: datetime, limit: int,
             after: tuple[datetime, str]) -> tuple[list[Due], int, tuple[datetime, str] | None]:
        """`due`, with how many period ends the page looked at and the last one (where the next page starts)."""
        with self._engine.connect() as conn:
            page = conn.execute(_DUE_PERIOD_ENDS, {
                "close_before": now - self._close_grace, "grace": self._close_grace,
                "dunning_pickup": DUNNING_PICKUP, "commands_topic": topics.COMMANDS, "after_at": after[0],
                "after_id": after[1], "limit": limit}).all()
            found = [Due("period.close", r.subscription_id, r.customer_id, r.due_at) for r in page if not r.held]
            found = self._with_invoice_grace(conn, found)
            found += [Due("invoice.finalize", r.subscription_id, r.customer_id, r.due_at, invoice_id=r.invoice_id)
                      for r in conn.execute(_DUE_DRAFTS, {"now": now, "limit": limit})]
            found += [Due("trial.end", r.subscription_id, r.customer_id, r.due_at)
                      for r in conn.execute(_DUE_TRIAL_ENDS, {"close_before": now - self._close_grace,
                                                              "limit": limit})]
            found += [Due("credits.expire", r.subscription_id, r.customer_id, r.due_at)
                      for r in conn.execute(_DUE_EXPIRIES, {"now": now, "limit": limit})]
        last = (page[-1].due_at, page[-1].subscription_id) if page else None
        return found, len(page), last

    def _with_invoice_grace(self, conn: sa.Connection, closes: list[Due]) -> list[Due]:
        """The period closes, each carrying its invoice's grace: the customer's own setting, else the
        issuer's (`invoice_grace_seconds`), by the domain's rule."""
        if not closes:
            return closes
        c = customers.c
        own: dict[str, int] = {r.customer_id: r.invoice_grace_seconds for r in conn.execute(
            sa.select(c.customer_id, c.invoice_grace_seconds).where(
                one_of(c.customer_id, sorted({d.customer_id for d in closes})), c.invoice_grace_seconds.is_not(None)))}
        return [replace(d, finalize_after_seconds=invoice_grace_seconds(own.get(d.customer_id), self._invoice_grace)
                        or None) for d in closes]

    def tick(self, now: datetime | None = None) -> int:
        """Produce the commands due at the billing clock's now; returns how many were produced.

        Period ends are swept once: a tick looks only at those after the instant the last completed sweep
        covered, and a full sweep from the beginning runs every `scheduler_full_sweep_s` (and after a restart).
        Rescanning every due subscription on every tick cost PostgreSQL a pass over all of them (and an anti-join
        with `scheduled_commands`) every `scheduler_interval_s` until each had closed: ~23 ms a tick with 10,000
        due, ten times that at 100,000, for the whole of a month's close. What the windowed ticks leave out is a
        close held back (an unsettled charge, dunning, a pending retry) or a period end that moved to an already
        swept instant: the next full sweep emits it, at most `scheduler_full_sweep_s` later. A sweep goes through
        the due period ends in (instant, subscription) order, a page of `batch` per tick, each page starting after
        the last one it looked at, so held-back closes never fill the pages and hide the others."""
        instant = now or self._clock.now()
        if self._position is None:  # a sweep starts: a full one, or from where the last one ended
            started = time.monotonic()
            full = self._swept_through is None or started - self._full_swept_at >= self._full_sweep_s
            self._position = (BEGINNING if full or self._swept_through is None else self._swept_through, "")
            self._sweep_started = started if full else None
        due, looked_at, last = self._due(instant, self._batch, self._position)
        if due:
            self.emit(due, instant)
        if looked_at < self._batch or last is None:  # the sweep reached the last due period end
            self._swept_through = instant - self._close_grace
            if self._sweep_started is not None:
                self._full_swept_at = self._sweep_started
            self._position = None
        else:
            self._position = last
        if not due:
            return 0
        log.info("scheduler emitted commands", extra=kv(
            count=len(due), period_close=sum(d.kind == "period.close" for d in due),
            trial_end=sum(d.kind == "trial.end" for d in due),
            invoice_finalize=sum(d.kind == "invoice.finalize" for d in due),
            credits_expire=sum(d.kind == "credits.expire" for d in due), clock=instant.isoformat()))
        return len(due)

    def emit(self, due: Sequence[Due], now: datetime) -> None:
        if self._producer is None:
            self._producer = KafkaProducer(self._settings, client_id=PRODUCER_NAME)
        messages = []
        for d in due:
            envelope = new_envelope(d.kind, d.payload().model_dump(mode="json"), producer=PRODUCER_NAME,
                                    occurred_at=now, event_id=d.event_id)
            messages.append(OutgoingMessage.of(topics.COMMANDS, d.subscription_id, envelope))
        self._producer.send_and_wait(messages, timeout=120)
        with self._engine.begin() as conn:
            conn.execute(_REMEMBER_EMITTED, {"subs": [d.subscription_id for d in due], "kinds": [d.kind for d in due],
                                             "dues": [d.due_at for d in due], "ids": [d.event_id for d in due],
                                             "at": now})

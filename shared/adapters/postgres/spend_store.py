"""The usage-tier spend store: spend caps, authorisations and the worker's usage (sync SQLAlchemy: the
worker's read helpers it reuses are sync). The edge's spend use cases run it in worker threads
(``services.ingest.service_layer.spend``), except the authorisation write, which the served edge sends from its
event loop on the async quota pool (``SpendWrites``, the same statement); the visible-spend rule is the
domain's ``SpendUsage``."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg_pool import AsyncConnectionPool

from shared.adapters.postgres.arrays import number_array, text_array
from shared.adapters.postgres.outbox import bundle_insert_sql
from shared.adapters.postgres.schema.billing import subscriptions
from shared.adapters.postgres.subscription_reads import newest_live_subscription
from shared.adapters.postgres.usage_reads import grant_balances, usage_since
from shared.domain.spend import SpendUsage
from shared.errors import DatabaseUnavailableError, RefusedError


class SpendStoreError(RefusedError):
    """Family: the spend store refused a write for a reason the caller must handle; a refusal under the
    error root, with its machine-readable ``code``.

    Raised as such when the limit backstop (a CHECK constraint) refused the authorisation (code
    ``spend_backstop``): nothing was written.
    # NOTE: not a ``DataRejectedError``: the request's data is not at fault, so an escaped one stays a 500.
    """

    code = "spend_backstop"

    def __init__(self, message: str) -> None:
        super().__init__(message, code=type(self).code)


class DuplicateAuthorisation(SpendStoreError):
    """Another writer stored the same request id concurrently; re-read and replay it."""

    code = "duplicate_authorisation"



@dataclass(frozen=True, slots=True)
class SpendAccountRow:
    org_id: str
    monthly_cap_minor: int | None
    currency: str | None
    version: int


@dataclass(frozen=True, slots=True)
class LiveSubscriptionRow:
    """The org's newest subscription that is not cancelled (the one its usage is billed to)."""

    subscription_id: str
    plan_id: str
    status: str
    seats: int
    interval: str
    timezone: str
    anchor_day: int
    anchor_month: int
    anchor_time: Any
    current_period_start: datetime
    current_period_end: datetime


@dataclass(frozen=True, slots=True)
class ReservationRow:
    """A stored authorisation (what a retry of its request id gets back)."""

    request_id: str
    transaction_id: str
    period_start: datetime
    period_end: datetime
    quantity: int
    limit_quantity: int | None
    spent_quantity: int
    reserved_at: datetime


@dataclass(frozen=True, slots=True)
class Reservation:
    """One admitted authorisation of a batch: its row and its ``usage.recorded`` event (the batch's events go
    in one outbox bundle)."""

    request_id: str  # also the usage event's transaction id
    quantity: int
    spent_quantity: int  # the period's visible spend after this one
    event_id: uuid.UUID
    envelope_json: str


@dataclass(frozen=True, slots=True)
class Authorisation:
    """The admitted authorisations of one org's batch, committed together and only if the account is
    still at ``seen_version`` (compare-and-set)."""

    org_id: str
    seen_version: int
    subscription_id: str
    period_start: datetime
    period_end: datetime
    observed_quantity: int
    limit_quantity: int | None
    reserved_at: datetime
    usage_topic: str
    reservations: tuple[Reservation, ...]


# One statement per batch: every write hangs off the compare-and-set, so a moved account writes nothing.
# NOTE: written in psycopg's own placeholders (not SQLAlchemy's), so that the edge's event loop sends it on the
# async pool (`SpendWrites`) and a worker thread through the engine (`SpendStore.authorise`, by
# `exec_driver_sql`) with the same text; arrays go as literals (`arrays`), cheaper than psycopg's list dumping.
_AUTHORISE_SQL = """
WITH cas AS (
    UPDATE spend_accounts SET version = version + 1, updated_at = now()
     WHERE org_id = %(org_id)s AND version = %(seen_version)s
    RETURNING version
), period AS (
    INSERT INTO spend_periods AS p (org_id, period_start, period_end, reserved_quantity, observed_quantity,
                                    limit_quantity)
    SELECT %(org_id)s, %(period_start)s, %(period_end)s, %(total)s, %(observed)s, %(limit)s FROM cas
    ON CONFLICT (org_id, period_start) DO UPDATE
       SET reserved_quantity = p.reserved_quantity + excluded.reserved_quantity,
           observed_quantity = GREATEST(p.observed_quantity, excluded.observed_quantity),
           limit_quantity = excluded.limit_quantity
    RETURNING 1
), reservation AS (
    INSERT INTO spend_reservations (org_id, request_id, transaction_id, subscription_id, period_start, period_end,
                                    quantity, limit_quantity, spent_quantity, reserved_at, event_id)
    SELECT %(org_id)s, r.request_id, r.request_id, %(subscription_id)s, %(period_start)s, %(period_end)s,
           r.quantity, %(limit)s, r.spent, %(reserved_at)s, r.event_id
      FROM cas, unnest(%(request_ids)s::text[], %(quantities)s::bigint[], %(spents)s::bigint[],
                       %(event_ids)s::uuid[]) AS r(request_id, quantity, spent, event_id)
    RETURNING 1
), usage_event AS (
    """ + bundle_insert_sql(
        source="cas, unnest(%(event_ids)s::uuid[], %(envelopes)s::text[]) WITH ORDINALITY AS e(event_id, envelope, n)",
        topic="%(usage_topic)s", key="%(subscription_id)s", event_type="'usage.recorded'", event_id="e.event_id",
        envelope="CAST(e.envelope AS json)", order="e.n") + """
    RETURNING 1
)
SELECT (SELECT version FROM cas) AS version, (SELECT count(*) FROM period) AS periods,
       (SELECT count(*) FROM reservation) AS reservations, (SELECT count(*) FROM usage_event) AS events
"""


def _authorise_params(write: Authorisation) -> dict[str, Any]:
    batch = write.reservations
    return {
        "org_id": write.org_id, "seen_version": write.seen_version, "subscription_id": write.subscription_id,
        "period_start": write.period_start, "period_end": write.period_end,
        "total": sum(r.quantity for r in batch), "observed": write.observed_quantity,
        "limit": write.limit_quantity, "reserved_at": write.reserved_at, "usage_topic": write.usage_topic,
        "request_ids": text_array(r.request_id for r in batch), "quantities": number_array(r.quantity for r in batch),
        "spents": number_array(r.spent_quantity for r in batch),
        "event_ids": text_array(str(r.event_id) for r in batch),
        "envelopes": text_array(r.envelope_json for r in batch),
    }


def _refused(error: psycopg.errors.IntegrityError | psycopg.OperationalError) -> Exception:
    """What a failed authorisation write means to the caller (nothing of it was written either way)."""
    if isinstance(error, psycopg.errors.UniqueViolation):
        return DuplicateAuthorisation(str(error))
    if isinstance(error, psycopg.errors.IntegrityError):
        return SpendStoreError(f"spend backstop refused the write: {error}")
    return DatabaseUnavailableError(str(error))


# Where an org's count of materialised authorisations stands for a period (none yet: 0 and 0).
_SETTLED_SQL = sa.text("""
SELECT coalesce(max(through_seq), 0) AS through_seq, coalesce(max(quantity), 0) AS quantity
  FROM spend_materialised WHERE org_id = :org_id AND period_start = :period_start
""")

# What the org authorised in the period, and how much of it the worker has materialised: the count read above
# plus the reservations after its number whose usage event is in `usage_events` (one key probe each). One
# statement, so the reserved total, the reservations and the events are one snapshot. It also says how far
# the count can move: up to the first reservation after it whose event has not arrived (the reservations after
# that one are counted again by the next read). Reservations get their numbers in commit order within an org
# (schema NOTE on `spend_reservations.seq`), so none can appear below a number read here, and a count another
# read moved on meanwhile is still true: the number is given, not read here, so that the plan knows how few
# rows lie after it (read in the statement, it was costed as a third of the org's rows: a sequential scan).
_RESERVED_SQL = sa.text("""
WITH tail AS (
    SELECT r.seq, r.quantity, e.found IS NOT NULL AS materialised
      FROM spend_reservations r
      LEFT JOIN LATERAL (SELECT true AS found FROM usage_events x
                          WHERE x.customer_id = r.org_id AND x.transaction_id = r.transaction_id LIMIT 1) e ON true
     WHERE r.period_start = :period_start AND r.org_id = :org_id AND r.seq > CAST(:through_seq AS bigint)
), prefix AS (
    SELECT seq, quantity FROM tail
     WHERE seq < coalesce((SELECT min(seq) FROM tail WHERE NOT materialised), 9223372036854775807)
)
SELECT coalesce((SELECT reserved_quantity FROM spend_periods
                  WHERE org_id = :org_id AND period_start = :period_start), 0) AS reserved,
       CAST(:settled_quantity AS bigint) + coalesce((SELECT sum(quantity) FROM tail WHERE materialised), 0)
           AS materialised,
       (SELECT max(seq) FROM prefix) AS settle_seq,
       CAST(:settled_quantity AS bigint) + coalesce((SELECT sum(quantity) FROM prefix), 0) AS settle_quantity
""")

# Moves the count on, only from where this read found it: a read that lost the race to another changes nothing.
_SETTLE_SQL = sa.text("""
INSERT INTO spend_materialised AS m (org_id, period_start, through_seq, quantity)
VALUES (:org_id, :period_start, :through_seq, :quantity)
ON CONFLICT (org_id, period_start) DO UPDATE SET through_seq = excluded.through_seq, quantity = excluded.quantity
 WHERE m.through_seq = :seen_seq
""")


# A batch's stored authorisations: one primary-key probe per request id (see quota_store's NOTE on looking an
# org's rows up by a list of keys).
_RESERVATIONS_SQL = """
SELECT s.request_id, s.transaction_id, s.period_start, s.period_end, s.quantity, s.limit_quantity,
       s.spent_quantity, s.reserved_at
  FROM unnest(CAST(:r AS text[])) AS q(request_id)
 CROSS JOIN LATERAL (SELECT * FROM spend_reservations x WHERE x.org_id = :o AND x.request_id = q.request_id
                      LIMIT 1) AS s
"""


class SpendStore:
    """Spend caps, authorised spend and the worker's usage, read and written with one sync engine.

    Every method takes an open connection so that a caller (a thread of the edge) can read a whole
    snapshot on one connection; ``authorise`` must run inside a transaction (``engine.begin()``).
    """

    @staticmethod
    def ensure_account(conn: sa.Connection, org_id: str) -> None:
        conn.execute(sa.text("INSERT INTO spend_accounts (org_id) VALUES (:o) ON CONFLICT (org_id) DO NOTHING"),
                     {"o": org_id})

    @staticmethod
    def account(conn: sa.Connection, org_id: str) -> SpendAccountRow | None:
        row = conn.execute(sa.text("SELECT org_id, monthly_cap_minor, currency, version FROM spend_accounts"
                                   " WHERE org_id = :o"), {"o": org_id}).one_or_none()
        return None if row is None else SpendAccountRow(row.org_id, row.monthly_cap_minor, row.currency,
                                                         row.version)

    @staticmethod
    def caps(conn: sa.Connection, org_ids: Sequence[str]) -> dict[str, tuple[int, str]]:
        """The caps of those of ``org_ids`` that set one: {org: (cap minor units, currency)}."""
        rows = conn.execute(sa.text("SELECT org_id, monthly_cap_minor, currency FROM spend_accounts"
                                    " WHERE org_id = ANY(:orgs) AND monthly_cap_minor IS NOT NULL"),
                            {"orgs": list(org_ids)})
        return {row.org_id: (int(row.monthly_cap_minor), row.currency) for row in rows}

    @staticmethod
    def set_cap(conn: sa.Connection, org_id: str, cap_minor: int | None, currency: str | None) -> SpendAccountRow:
        """Set (or with None remove) the org's cap and bump its version, so in-flight decisions re-run."""
        row = conn.execute(sa.text(
            "INSERT INTO spend_accounts AS a (org_id, monthly_cap_minor, currency, version)"
            " VALUES (:o, :cap, :cur, 1) ON CONFLICT (org_id) DO UPDATE"
            " SET monthly_cap_minor = excluded.monthly_cap_minor, currency = excluded.currency,"
            " version = a.version + 1, updated_at = now()"
            " RETURNING org_id, monthly_cap_minor, currency, version"),
            {"o": org_id, "cap": cap_minor, "cur": currency}).one()
        return SpendAccountRow(row.org_id, row.monthly_cap_minor, row.currency, row.version)

    @staticmethod
    def live_subscription(conn: sa.Connection, org_id: str) -> LiveSubscriptionRow | None:
        s = subscriptions.c
        row = conn.execute(newest_live_subscription(
            org_id, s.subscription_id, s.plan_id, s.status, s.seats, s.interval, s.timezone, s.anchor_day,
            s.anchor_month, s.anchor_time, s.current_period_start, s.current_period_end)).one_or_none()
        return None if row is None else LiveSubscriptionRow(**row._asdict())

    @staticmethod
    def usage(conn: sa.Connection, org_id: str, subscription_id: str, meter_id: str, period_start: datetime,
              period_end: datetime, *, settle: bool = False) -> SpendUsage:
        """The meter's usage of the period (worker's aggregates + this edge's authorisations) and the money
        left on grants other than the plan's included credit (promotional, refunds, paid top-ups).

        ``settle``: also move the org's count of materialised authorisations on (``_SETTLE_SQL``), in the
        caller's transaction, which must commit for it to count and should hold no other row lock (the upsert
        waits for another read settling the same org)."""
        period = usage_since(conn, subscription_id, period_start)
        key = {"org_id": org_id, "period_start": period_start}
        settled = conn.execute(_SETTLED_SQL, key).one()
        reserved = conn.execute(_RESERVED_SQL, {**key, "through_seq": settled.through_seq,
                                                "settled_quantity": settled.quantity}).one()
        if settle and reserved.settle_seq is not None:
            conn.execute(_SETTLE_SQL, {**key, "through_seq": reserved.settle_seq,
                                       "quantity": reserved.settle_quantity, "seen_seq": settled.through_seq})
        other = sum(g.remaining_minor or 0 for g in grant_balances(
            conn, subscription_id, usable_at=period_end - timedelta(seconds=1))
            if g.meter_id == meter_id and g.source != "plan_included" and g.remaining_minor is not None)
        return SpendUsage(materialised=period.totals.get(meter_id, Decimal(0)), reserved=int(reserved.reserved),
                          reserved_materialised=int(reserved.materialised), other_credit_minor=max(0, other))

    @staticmethod
    def reservations(conn: sa.Connection, org_id: str, request_ids: Sequence[str]) -> dict[str, ReservationRow]:
        """The stored authorisations among ``request_ids`` (a batch's retries), by request id."""
        rows = conn.execute(sa.text(_RESERVATIONS_SQL), {"o": org_id, "r": list(request_ids)})
        return {row.request_id: ReservationRow(**row._asdict()) for row in rows}

    @staticmethod
    def authorise(conn: sa.Connection, write: Authorisation) -> bool:
        """Commit ``write`` (a batch of one org) if the account is still at ``seen_version``; False: nothing
        written, re-decide. What ``SpendWrites.authorise`` does, on a connection of the sync engine.

        ``DuplicateAuthorisation`` when one of its request ids is already stored (a retry decided on
        remembered state, or another writer concurrently); a CHECK violation (the limit backstop) is
        ``SpendStoreError``. Either way nothing was written.
        """
        try:
            row = conn.exec_driver_sql(_AUTHORISE_SQL, _authorise_params(write)).one()
        except (sa.exc.IntegrityError, sa.exc.OperationalError) as error:
            raise _refused(error.orig) from error  # type: ignore[arg-type]
        return row.version is not None


class SpendWrites:
    """The authorisation write on the edge's async psycopg pool (the quota pool): sent from the event loop as
    one statement in its own implicit transaction, so a batch costs one round trip and no worker thread."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def authorise(self, write: Authorisation) -> bool:
        """``SpendStore.authorise`` on the pool: True once committed, False when the account moved on."""
        try:
            async with self._pool.connection() as conn, conn.cursor() as cur:
                await cur.execute(_AUTHORISE_SQL, _authorise_params(write))
                row = await cur.fetchone()
        except (psycopg.errors.IntegrityError, psycopg.OperationalError) as error:
            raise _refused(error) from error
        assert row is not None
        return row[0] is not None

"""Report-credit leases in PostgreSQL: blocks of an org's month reserved by one edge process, and the
pipelined group commit of the admissions it decided against them (async psycopg, the quota pool).

- ``grant`` reserves up to ``wanted`` reports of the org's month by a compare-and-set on
  ``quota_org_months.leased`` under the org's row lock (the CHECK ``used + leased <= allotment`` is the
  backstop), never more than ``1 / fraction`` of what is free, and nothing when less than ``min_free`` is
  free: then every request is decided on the exact path. The lease expires by the DATABASE clock.
  Orgs without a plan (trial) or with a per-user limit get no lease. Expired leases of the org are
  reclaimed first (what they did not consume goes back to their month).
- ``commit`` writes the admissions of many orgs in ONE statement: per admission its consumption row
  (``ON CONFLICT (org, enquiry) DO NOTHING``: an enquiry stored before, by any process, is not admitted
  again), its ``usage.recorded`` event (in one outbox bundle per org and group), and per org the month and
  user counters and new alerts. An admission is written only if its lease is live at the statement's start
  by the database clock (the fence: a late write of a process whose lease expired or was revoked writes
  nothing). The caller learns which admissions were stored; every other one must be decided again on the
  exact path.
- ``revoke`` ends every open lease of an org (and gives their rest back): the exact path does it before
  refusing for want of reports that sit in leases, administrative writes do it in their transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from shared.adapters.postgres.outbox import bundle_insert_sql
from shared.adapters.postgres.quota_store import (
    _LOAD_SQL,
    REVOKE_LEASES_SQL,
    NewAlert,
    OrgSnapshot,
    _load_params,
    _snapshot,
)
from shared.adapters.postgres.raw_statement import RawStatement
from shared.errors import DatabaseUnavailableError


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """A granted lease: ``granted`` reports of ``month_start`` for ``seconds`` (by the database clock, as
    measured when it was granted), and the org as read under its row lock (counters include the lease)."""

    lease_id: uuid.UUID
    org_id: str
    month_start: datetime
    granted: int
    seconds: float
    snapshot: OrgSnapshot


@dataclass(frozen=True, slots=True)
class LeasedAdmission:
    """One admission decided against a lease, with its stored answer and its usage event."""

    org_id: str
    lease_id: uuid.UUID
    month_start: datetime
    month_end: datetime
    consumed_at: datetime
    enquiry_id: str
    user_id: str
    org_allotment: int
    org_remaining: int
    event_id: uuid.UUID
    envelope_json: str
    message_key: str


@dataclass(frozen=True, slots=True)
class LeasedAlert:
    org_id: str
    alert: NewAlert
    message_key: str
    fired_at: datetime


@dataclass(frozen=True, slots=True)
class LeasedCommit:
    """What one group statement stored: the (org, enquiry) pairs admitted, each lease's consumed count
    after it, each (org, month)'s used count after it, the ids of the alerts inserted, and the leases that
    were live (the others were fenced: nothing under them was written)."""

    admitted: frozenset[tuple[str, str]]
    live: frozenset[uuid.UUID]
    consumed: dict[uuid.UUID, int]
    used: dict[tuple[str, datetime], int]
    alerts_inserted: frozenset[uuid.UUID]


# NOTE: locks are taken in the order every other writer of these rows takes them: the orgs first (`orgs`,
# FOR SHARE in org-id order: the exact path's compare-and-set, a grant and a revocation lock the org row
# before its month and user rows, and a group that wrote the month or user rows first deadlocked with them),
# then the leases (`live`, in lease-id order), then the month rows (`months`, in (org, month) order, before
# any is updated: `moved` joins it), so no two writers can deadlock; groups of several processes share the
# org locks. The fence is `live`: only admissions under a lease live by the database clock at the
# statement's start are inserted.
# Counters move by what `admitted` really inserted (a duplicate enquiry inserts nothing and moves nothing).
# Alerts are written only for orgs with an admission in this statement.
_COMMIT_SQL = """
WITH c AS (
    SELECT * FROM json_to_recordset(%(rows)s::json)
           AS c(org_id text, lease_id uuid, month_start timestamptz, month_end timestamptz,
                consumed_at timestamptz, enquiry_id text, user_id text, org_allotment int, org_remaining int,
                event_id uuid, message_key text, envelope json, n int)
), orgs AS MATERIALIZED (
    SELECT o.org_id FROM quota_orgs o WHERE o.org_id = ANY(%(orgs)s::text[]) ORDER BY o.org_id FOR SHARE
), live AS MATERIALIZED (
    SELECT l.lease_id, l.org_id, l.month_start FROM quota_leases l
     WHERE l.lease_id = ANY(%(leases)s::uuid[]) AND l.returned_at IS NULL AND l.expires_at > now()
       AND l.org_id IN (SELECT org_id FROM orgs)
     ORDER BY l.lease_id FOR UPDATE
), admitted AS (
    INSERT INTO quota_consumptions (org_id, enquiry_id, user_id, month_start, month_end, consumed_at, org_allotment,
                                    org_remaining, user_limit, user_remaining, on_trial, event_id)
    SELECT c.org_id, c.enquiry_id, c.user_id, c.month_start, c.month_end, c.consumed_at, c.org_allotment,
           c.org_remaining, NULL, NULL, false, c.event_id
      FROM c JOIN live ON live.lease_id = c.lease_id AND live.org_id = c.org_id AND live.month_start = c.month_start
    ON CONFLICT (org_id, enquiry_id) DO NOTHING
    RETURNING org_id, enquiry_id, user_id, month_start, event_id
), per_lease AS (
    SELECT c.lease_id, c.org_id, c.month_start, count(*)::int AS n
      FROM admitted a JOIN c ON c.event_id = a.event_id GROUP BY c.lease_id, c.org_id, c.month_start
), leases AS (
    UPDATE quota_leases l SET consumed = l.consumed + p.n FROM per_lease p
     WHERE l.lease_id = p.lease_id
    RETURNING l.lease_id, l.consumed
), months AS MATERIALIZED (
    SELECT m.org_id, m.month_start FROM quota_org_months m
     WHERE (m.org_id, m.month_start) IN (SELECT org_id, month_start FROM per_lease)
     ORDER BY m.org_id, m.month_start FOR UPDATE
), moved AS (
    UPDATE quota_org_months m SET used = m.used + x.n, leased = m.leased - x.n
      FROM (SELECT p.org_id, p.month_start, sum(p.n)::int AS n FROM per_lease p
              JOIN months k ON k.org_id = p.org_id AND k.month_start = p.month_start
             GROUP BY p.org_id, p.month_start) x
     WHERE m.org_id = x.org_id AND m.month_start = x.month_start
    RETURNING m.org_id, m.month_start, m.used
), users AS (
    INSERT INTO quota_user_months AS u (org_id, month_start, user_id, used, limit_at_last_use)
    SELECT a.org_id, a.month_start, a.user_id, count(*)::int, NULL FROM admitted a
     GROUP BY a.org_id, a.month_start, a.user_id
    ON CONFLICT (org_id, month_start, user_id)
       DO UPDATE SET used = u.used + excluded.used, limit_at_last_use = NULL
    RETURNING 1
), usage_events AS (
    """ + bundle_insert_sql(source="admitted a JOIN c ON c.event_id = a.event_id", topic="%(usage_topic)s",
                            key="c.message_key", event_type="'usage.recorded'", event_id="c.event_id",
                            envelope="c.envelope", order="c.n") + """
    RETURNING 1
), alert_batch AS (
    SELECT a.* FROM jsonb_to_recordset(%(alerts)s::jsonb)
           AS a(org_id text, message_key text, fired_at timestamptz, period_start timestamptz, kind text,
                threshold int, user_id text, used int, allotment int, reason text, event_id uuid, envelope jsonb)
     WHERE a.org_id IN (SELECT org_id FROM admitted)
), alerts AS (
    INSERT INTO quota_alerts (org_id, period_start, kind, threshold_percent, user_id, used, allotment, reason,
                              event_id, fired_at)
    SELECT a.org_id, a.period_start, a.kind, a.threshold, a.user_id, a.used, a.allotment, a.reason,
           a.event_id, a.fired_at
      FROM alert_batch a
    ON CONFLICT (org_id, period_start, kind, threshold_percent, user_id) DO NOTHING
    RETURNING event_id, kind
), alert_events AS (
    INSERT INTO outbox (topic, message_key, event_id, event_type, envelope)
    SELECT %(alert_topic)s, b.message_key, a.event_id, a.kind, b.envelope
      FROM alerts a JOIN alert_batch b ON b.event_id = a.event_id
    RETURNING 1
)
SELECT (SELECT coalesce(jsonb_agg(jsonb_build_array(org_id, enquiry_id)), '[]'::jsonb) FROM admitted)
           AS admitted,
       (SELECT coalesce(array_agg(lease_id), '{}') FROM live) AS live,
       (SELECT coalesce(jsonb_agg(jsonb_build_array(lease_id, consumed)), '[]'::jsonb) FROM leases) AS consumed,
       (SELECT coalesce(jsonb_agg(jsonb_build_array(org_id, month_start, used)), '[]'::jsonb) FROM moved) AS used,
       (SELECT coalesce(array_agg(event_id), '{}') FROM alerts) AS alerts_inserted,
       (SELECT count(*) FROM usage_events) AS usage_events,
       (SELECT count(*) FROM users) AS users,
       (SELECT count(*) FROM alert_events) AS alert_events
"""


_COMMIT = RawStatement(_COMMIT_SQL)


# A grant's statements (`LeaseStore.grant` sends them as one query string: one implicit transaction). The
# org's row lock first, then the expired leases and their months: the exact path locks the org, then its month,
# so reclaiming first (month, then org) could deadlock with it. Orgs without a plan (trial) or with a per-user
# limit get nothing. Under the org's row lock the free rest cannot shrink (exact-path writes take the org row
# first; lease commits move `leased` to `used`, which keeps the sum): read it, then reserve at most
# 1/fraction of it, and nothing below min_free.
_GRANT_LOCK_SQL = "SELECT 1 FROM quota_orgs WHERE org_id = %(org_id)s FOR UPDATE"
# the orgs that may hold a lease: on a plan (not a trial), without a per-user limit
_LEASABLE_ORG = "org_id = %(org_id)s AND plan_monthly_reports IS NOT NULL AND per_user_monthly_limit IS NULL"
_GRANT_MONTH_SQL = f"""
INSERT INTO quota_org_months (org_id, month_start, month_end, plan_monthly_reports)
SELECT org_id, %(month_start)s, %(month_end)s, plan_monthly_reports FROM quota_orgs
 WHERE {_LEASABLE_ORG}
ON CONFLICT DO NOTHING
"""
_GRANT_RESERVE_SQL = f"""
WITH org AS (
    SELECT 1 FROM quota_orgs WHERE {_LEASABLE_ORG}
), month AS MATERIALIZED (
    SELECT GREATEST(plan_monthly_reports + top_ups, carried_over) - used - leased AS free
      FROM quota_org_months WHERE org_id = %(org_id)s AND month_start = %(month_start)s
       AND plan_monthly_reports IS NOT NULL AND EXISTS (SELECT 1 FROM org)
       FOR UPDATE
), block AS (
    SELECT LEAST(%(wanted)s, free / %(fraction)s)::int AS n FROM month
     WHERE free >= %(min_free)s AND LEAST(%(wanted)s, free / %(fraction)s) >= 1
), reserved AS (
    UPDATE quota_org_months SET leased = leased + (SELECT n FROM block)
     WHERE org_id = %(org_id)s AND month_start = %(month_start)s AND EXISTS (SELECT 1 FROM block)
    RETURNING 1
)
INSERT INTO quota_leases (lease_id, org_id, month_start, holder, granted, expires_at)
SELECT %(lease_id)s, %(org_id)s, %(month_start)s, %(holder)s, n, now() + make_interval(secs => %(seconds)s)
  FROM block WHERE EXISTS (SELECT 1 FROM reserved)
RETURNING granted, extract(epoch FROM expires_at - clock_timestamp())::float8 AS left
"""
# the exact path's remembered state counted the granted reports as free: make it read again
_GRANT_VERSION_SQL = """
UPDATE quota_orgs SET version = version + 1
 WHERE org_id = %(org_id)s AND EXISTS (SELECT 1 FROM quota_leases WHERE lease_id = %(lease_id)s)
"""


# NOTE: a grant waits at most 1 s for a row lock (a long administrative write on the org): its process lets
# only two grants run at once, and a grant stuck for as long as another transaction holds a row would keep every
# other org of the process from a lease. SET LOCAL ends with the implicit transaction.
_GRANT_STATEMENTS = ["SET LOCAL lock_timeout = '1s'", _GRANT_LOCK_SQL,
                     REVOKE_LEASES_SQL.format(only=" AND expires_at <= now()"), _GRANT_MONTH_SQL,
                     _GRANT_RESERVE_SQL, _GRANT_VERSION_SQL, _LOAD_SQL]
_GRANT_SQL = ";\n".join(_GRANT_STATEMENTS)
_GRANT_RESERVE_RESULT = _GRANT_STATEMENTS.index(_GRANT_RESERVE_SQL)
_GRANT_LOAD_RESULT = _GRANT_STATEMENTS.index(_LOAD_SQL)


# Gives back what a holder's open leases did not consume (the holder shutting down); month rows are locked in (org,
# month) order first, like the group statement's, so the two cannot deadlock.
_RELEASE_SQL = """
WITH gone AS (
    UPDATE quota_leases SET returned_at = now()
     WHERE holder = %(holder)s AND returned_at IS NULL
    RETURNING org_id, month_start, granted - consumed AS rest
), months AS MATERIALIZED (
    SELECT m.org_id, m.month_start FROM quota_org_months m
     WHERE (m.org_id, m.month_start) IN (SELECT org_id, month_start FROM gone)
     ORDER BY m.org_id, m.month_start FOR UPDATE
), back AS (
    UPDATE quota_org_months m SET leased = m.leased - g.rest
      FROM (SELECT g.org_id, g.month_start, sum(g.rest)::int AS rest FROM gone g
              JOIN months k ON k.org_id = g.org_id AND k.month_start = g.month_start
             GROUP BY g.org_id, g.month_start) g
     WHERE m.org_id = g.org_id AND m.month_start = g.month_start
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone) AS leases, (SELECT count(*) FROM back) AS months
"""


class LeaseStore:
    """Leases and their group commit over the quota pool (see the module docstring)."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def grant(self, org_id: str, month_start: datetime, month_end: datetime, holder: str, *, wanted: int,
                    fraction: int, min_free: int, seconds: float) -> LeaseGrant | None:
        """Reserve a block of the org's month for ``holder``, or None (no lease: decide on the exact path)."""
        lease_id = uuid.uuid4()
        params = {"org_id": org_id, "month_start": month_start, "month_end": month_end, "holder": holder,
                  "lease_id": lease_id, "wanted": wanted, "fraction": fraction, "min_free": min_free,
                  "seconds": seconds}
        try:
            async with self._pool.connection() as conn, \
                    psycopg.AsyncClientCursor(conn, row_factory=dict_row) as cur:
                # NOTE: one query string of several statements (client-side binding, the simple protocol):
                # the server runs them as one transaction without waiting for this process, so the org's row
                # lock is held for their execution only. Sent one round trip at a time from a busy event loop,
                # they held it for milliseconds, and every group statement with an admission of that org (so
                # every org's requests in it) waited that long: measured, the p99's tail.
                await cur.execute(_GRANT_SQL, {**params, **_load_params(org_id, month_start, [], [])})
                results: list[list[dict[str, Any]]] = []
                while True:
                    results.append(await cur.fetchall() if cur.description is not None else [])
                    if not cur.nextset():
                        break
        except psycopg.OperationalError as error:
            raise DatabaseUnavailableError(str(error)) from error
        reserved, loaded = results[_GRANT_RESERVE_RESULT], results[_GRANT_LOAD_RESULT]
        granted = reserved[0] if reserved else None
        row = loaded[0] if loaded else None
        if granted is None or row is None:
            return None
        return LeaseGrant(lease_id, org_id, month_start, int(granted["granted"]), float(granted["left"]),
                          _snapshot(row))

    async def commit(self, admissions: Sequence[LeasedAdmission], alerts: Sequence[LeasedAlert],
                     usage_topic: str, alert_topic: str) -> LeasedCommit:
        """Store what is live and new of ``admissions`` in one statement (see the module docstring).

        All or nothing on an error (a CHECK backstop, a lost connection): nothing was written.
        """
        rows = [{
            "org_id": a.org_id, "lease_id": a.lease_id, "month_start": a.month_start, "month_end": a.month_end,
            "consumed_at": a.consumed_at, "enquiry_id": a.enquiry_id, "user_id": a.user_id,
            "org_allotment": a.org_allotment, "org_remaining": a.org_remaining, "event_id": a.event_id,
            "message_key": a.message_key, "envelope": orjson.Fragment(a.envelope_json), "n": n}
            for n, a in enumerate(admissions)]
        alert_rows = [{
            "org_id": a.org_id, "message_key": a.message_key, "fired_at": a.fired_at,
            "period_start": a.alert.key.period_start, "kind": a.alert.key.kind,
            "threshold": a.alert.key.threshold_percent, "user_id": a.alert.key.user_id, "used": a.alert.used,
            "allotment": a.alert.allotment, "reason": a.alert.reason, "event_id": a.alert.event_id,
            "envelope": orjson.Fragment(a.alert.envelope_json)} for a in alerts]
        params = {"rows": orjson.dumps(rows).decode(),
                  "orgs": sorted({a.org_id for a in admissions}), "leases": sorted({a.lease_id for a in admissions}),
                  "alerts": orjson.dumps(alert_rows).decode(), "usage_topic": usage_topic, "alert_topic": alert_topic}
        try:
            async with self._pool.connection() as conn, psycopg.AsyncRawCursor(conn, row_factory=dict_row) as cur:
                await cur.execute(_COMMIT.sql, _COMMIT.args(params))
                row = await cur.fetchone()
        except psycopg.OperationalError as error:
            raise DatabaseUnavailableError(str(error)) from error
        assert row is not None
        return LeasedCommit(
            admitted=frozenset((org, enquiry) for org, enquiry in row["admitted"]),
            live=frozenset(row["live"]),
            consumed={uuid.UUID(lease): int(n) for lease, n in row["consumed"]},
            used={(org, datetime.fromisoformat(start)): int(n) for org, start, n in row["used"]},
            alerts_inserted=frozenset(row["alerts_inserted"]))

    async def revoke(self, org_id: str) -> int:
        """End every open lease of the org and give its rest back: the number of leases ended."""
        try:
            async with self._pool.connection() as conn, conn.transaction(), \
                    conn.cursor(row_factory=dict_row) as cur:
                await cur.execute("SELECT 1 FROM quota_orgs WHERE org_id = %(org_id)s FOR UPDATE", {"org_id": org_id})
                await cur.execute(REVOKE_LEASES_SQL.format(only=""), {"org_id": org_id})
                row = await cur.fetchone()
                assert row is not None
                if row["leases"]:
                    await cur.execute("UPDATE quota_orgs SET version = version + 1 WHERE org_id = %(org_id)s",
                                      {"org_id": org_id})
        except psycopg.OperationalError as error:
            raise DatabaseUnavailableError(str(error)) from error
        return int(row["leases"])

    async def release(self, holder: str) -> int:
        """End every open lease of ``holder`` (itself, shutting down) and give their rest back: how many ended."""
        try:
            async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(_RELEASE_SQL, {"holder": holder})
                row = await cur.fetchone()
        except psycopg.OperationalError as error:
            raise DatabaseUnavailableError(str(error)) from error
        assert row is not None
        return int(row["leases"])

    async def open_leases(self, org_id: str) -> list[dict[str, Any]]:
        """The org's leases not yet ended (for operators and tests)."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute("SELECT lease_id, month_start, holder, granted, consumed, expires_at FROM quota_leases"
                              " WHERE org_id = %(org_id)s AND returned_at IS NULL ORDER BY granted_at",
                              {"org_id": org_id})
            return list(await cur.fetchall())

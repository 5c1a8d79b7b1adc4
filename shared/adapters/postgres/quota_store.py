"""The report-credit store: PostgreSQL side of the report quota (async, psycopg 3, one pool).

The domain (``shared.domain.quota``) decides; this module makes the decision stick under concurrency:

- ``load`` reads, in one statement, everything the rule needs for a batch of requests of one org: the org
  row (with its ``version``), the month's counter, the requesting users' counters, the enquiries already
  admitted and the alerts already sent.
- ``commit_batch`` is ONE statement (a CTE, so one implicit transaction) whose every write hangs off a
  conditional ``UPDATE quota_orgs ... WHERE version = :seen`` (compare-and-set). If anything that could
  change the answer was written since ``load``, zero rows match, nothing is written, and the caller
  re-reads and re-decides. Otherwise it adds the admitted reports to the month and user counters, inserts
  one row per admitted enquiry (primary key (org, enquiry): a concurrent duplicate from another process
  fails the whole statement instead of consuming twice), the usage events and the new alerts into the
  outbox, all atomically. The CHECK constraints of ``schema.quota`` are the backstop: a write that would
  take ``used`` past the allotment (or a user past the limit) aborts the statement.
- Administrative writes (plan, limit, top-up, thresholds, trial) run in a short transaction that locks the
  org row (``SELECT ... FOR UPDATE``) and bump ``version``, so an in-flight batch decided on the old
  configuration cannot commit.

Driver errors become ``shared.errors`` families: a unique violation on an enquiry is ``DuplicateEnquiry``
(retry: the enquiry now exists), a CHECK violation ``QuotaStoreError`` (both refusals with a code), anything
else on the connection is ``DatabaseUnavailableError`` (retryable). The
usage-tier spend store is ``shared.adapters.postgres.spend_store`` (sync SQLAlchemy, like the worker's reads).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from shared.adapters.postgres.outbox import bundle_insert_sql
from shared.adapters.postgres.raw_statement import RawStatement
from shared.errors import DatabaseUnavailableError, RefusedError


class QuotaStoreError(RefusedError):
    """Family: the quota store refused a write (or knows no such org) for a reason the caller must handle;
    a refusal under the error root, with its machine-readable ``code``.

    Raised as such when a CHECK constraint (the backstop: ``used`` past the allotment, a user past the limit)
    refused the write (code ``quota_backstop``): nothing was written; the decision was taken on stale state.
    # NOTE: not a ``DataRejectedError``: the request's data is not at fault, so an escaped one stays a 500.
    """

    code = "quota_backstop"

    def __init__(self, message: str) -> None:
        super().__init__(message, code=type(self).code)


class DuplicateEnquiry(QuotaStoreError):
    """Another writer admitted one of the batch's enquiries concurrently; re-read and replay it."""

    code = "duplicate_enquiry"


class UnknownOrg(QuotaStoreError):
    """The org has no quota configuration (no plan was ever set and no trial started)."""

    code = "unknown_org"


# --- rows -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrgRow:
    org_id: str
    plan_id: str | None
    plan_monthly_reports: int | None
    per_user_monthly_limit: int | None
    timezone: str
    trial_started_at: datetime | None
    trial_reports: int
    trial_days: int
    trial_used: int
    alert_thresholds: tuple[int, ...]
    subscription_id: str | None
    version: int

    @property
    def message_key(self) -> str:
        return self.subscription_id or self.org_id


@dataclass(frozen=True, slots=True)
class MonthRow:
    month_start: datetime
    month_end: datetime
    plan_monthly_reports: int | None
    top_ups: int
    used: int
    # reserved by edge processes' live leases (``quota_lease_store``): spoken for, not used
    leased: int = 0


@dataclass(frozen=True, slots=True)
class ConsumptionRow:
    """The stored answer for an admitted enquiry (what a retry gets back)."""

    enquiry_id: str
    user_id: str
    month_start: datetime
    month_end: datetime
    consumed_at: datetime
    org_allotment: int
    org_remaining: int
    user_limit: int | None
    user_remaining: int | None
    on_trial: bool


@dataclass(frozen=True, slots=True)
class AlertKey:
    kind: str
    period_start: datetime
    threshold_percent: int = 0
    user_id: str = ""


@dataclass(frozen=True, slots=True)
class OrgSnapshot:
    """One consistent read of an org for a batch (all from the same statement snapshot)."""

    org: OrgRow
    month: MonthRow | None
    user_used: dict[str, int]
    prior: dict[str, ConsumptionRow]
    alerts_sent: frozenset[AlertKey]


@dataclass(frozen=True, slots=True)
class NewConsumption:
    enquiry_id: str
    user_id: str
    org_allotment: int
    org_remaining: int
    user_limit: int | None
    user_remaining: int | None
    on_trial: bool
    event_id: uuid.UUID
    envelope_json: str


@dataclass(frozen=True, slots=True)
class NewAlert:
    key: AlertKey
    used: int
    allotment: int
    reason: str
    event_id: uuid.UUID
    envelope_json: str


@dataclass(frozen=True, slots=True)
class BatchWrite:
    """What one decided batch adds: counters, admitted enquiries with their usage events, alerts."""

    org_id: str
    seen_version: int
    month_start: datetime
    month_end: datetime
    month_plan_reports: int | None
    consumed_at: datetime
    trial_delta: int
    user_limit: int | None
    user_grants: dict[str, int]
    consumptions: Sequence[NewConsumption]
    alerts: Sequence[NewAlert]
    usage_topic: str
    alert_topic: str
    message_key: str
    refused_enquiries: Sequence[str] = ()
    # the month's top-ups as read: the counter's upsert proposes them with the new row (see _COMMIT_SQL)
    month_top_ups: int = 0
    granted: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "granted", len(self.consumptions))


# --- SQL ------------------------------------------------------------------------------------------------

# NOTE: rows of an org are looked up by a list of keys (the enquiries of a batch, its users) one key at a time:
# the list unnested, each key probed through a LATERAL subquery with LIMIT 1 (which the planner cannot flatten),
# so every probe is a primary-key lookup on (org, key). Written as `key = ANY(<list>)`, a prepared statement's
# generic plan, costed on the average org, read the org's rows by org alone and filtered them by the list: every
# exact-path write of a big org among many small ones read all of that org's consumptions, ever (20,000 of
# them per write in the regression test, growing with each admission). `spend_store` reads reservations so too.

_LOAD_SQL = """
SELECT o.org_id, o.plan_id, o.plan_monthly_reports, o.per_user_monthly_limit, o.timezone,
       o.trial_started_at, o.trial_reports, o.trial_days, o.trial_used, o.alert_thresholds,
       o.subscription_id, o.version,
       m.month_start AS m_start, m.month_end AS m_end, m.plan_monthly_reports AS m_plan,
       m.top_ups AS m_top_ups, m.used AS m_used, m.leased AS m_leased,
       (SELECT coalesce(jsonb_object_agg(u.user_id, u.used), '{}'::jsonb)
          FROM (SELECT DISTINCT user_id FROM jsonb_array_elements_text(%(users)s::jsonb) AS w(user_id)) AS w
         CROSS JOIN LATERAL (SELECT x.user_id, x.used FROM quota_user_months x
                              WHERE x.org_id = o.org_id AND x.month_start = %(month_start)s
                                AND x.user_id = w.user_id LIMIT 1) AS u)
         AS user_used,
       (SELECT coalesce(jsonb_agg(jsonb_build_object(
                 'enquiry_id', c.enquiry_id, 'user_id', c.user_id, 'month_start', c.month_start,
                 'month_end', c.month_end, 'consumed_at', c.consumed_at, 'org_allotment', c.org_allotment,
                 'org_remaining', c.org_remaining, 'user_limit', c.user_limit,
                 'user_remaining', c.user_remaining, 'on_trial', c.on_trial)), '[]'::jsonb)
          FROM (SELECT DISTINCT enquiry_id FROM jsonb_array_elements_text(%(enquiries)s::jsonb) AS w(enquiry_id)) AS w
         CROSS JOIN LATERAL (SELECT * FROM quota_consumptions x
                              WHERE x.org_id = o.org_id AND x.enquiry_id = w.enquiry_id LIMIT 1) AS c)
         AS prior,
       (SELECT coalesce(jsonb_agg(jsonb_build_array(a.kind, a.period_start, a.threshold_percent, a.user_id)),
                        '[]'::jsonb)
          FROM quota_alerts a
         WHERE a.org_id = o.org_id
           AND (a.period_start = %(month_start)s OR a.period_start = o.trial_started_at)) AS alerts
  FROM quota_orgs o
  LEFT JOIN quota_org_months m ON m.org_id = o.org_id AND m.month_start = %(month_start)s
 WHERE o.org_id = %(org_id)s
"""

# The alert writes shared by both statements below: `{gate}` joins the compare-and-set when there is one
# (nothing is written if it missed), or is empty.
_ALERT_WRITES = """
alert_batch AS (
    SELECT a.* FROM jsonb_to_recordset(%(alerts)s::jsonb)
           AS a(period_start timestamptz, kind text, threshold int, user_id text, used int, allotment int,
                reason text, event_id uuid, envelope jsonb){gate}
), alerts AS (
    INSERT INTO quota_alerts (org_id, period_start, kind, threshold_percent, user_id, used, allotment, reason,
                              event_id, fired_at)
    SELECT %(org_id)s, a.period_start, a.kind, a.threshold, a.user_id, a.used, a.allotment, a.reason,
           a.event_id, %(consumed_at)s
      FROM alert_batch a
    ON CONFLICT (org_id, period_start, kind, threshold_percent, user_id) DO NOTHING
    RETURNING event_id, kind
), alert_events AS (
    INSERT INTO outbox (topic, message_key, event_id, event_type, envelope)
    SELECT %(alert_topic)s, %(message_key)s, a.event_id, a.kind, b.envelope
      FROM alerts a JOIN alert_batch b ON b.event_id = a.event_id
    RETURNING 1
)"""

# NOTE: a batch's rows travel as ONE JSON text parameter per kind (consumptions, user grants, alerts),
# unpacked in SQL with jsonb_to_recordset, not as one array parameter per column: psycopg adapts arrays
# element by element in Python (under cProfile the largest server-side cost of a report credit), while
# orjson writes the whole batch in microseconds. Measured without a profiler: ~10 % less CPU per request.
# Every write below depends on `cas`: if the org's version moved since the read, nothing is written.
# NOTE: the month counter's upsert proposes the month's top-ups (as read) with its row: PostgreSQL checks
# the proposed row's CHECK before the conflict turns the insert into an update, and a batch admitting more
# than the plan's allotment alone (possible once a top-up lifted it) was refused by it (a 500 per request).
# The proposed top-ups are only stored when the row is new, and then no top-up can have been granted
# since the read (a top-up bumps the org's version).
# Nor is anything written when an enquiry the batch refused was in fact admitted before (a retry decided
# on remembered state, which holds no enquiries): the batch is then re-read and the retry replayed.
_COMMIT_SQL = """
WITH cas AS (
    UPDATE quota_orgs
       SET version = version + 1, trial_used = trial_used + %(trial_delta)s, updated_at = now()
     WHERE org_id = %(org_id)s AND version = %(seen_version)s
       AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements_text(%(refused)s::jsonb) AS r(enquiry_id)
                        CROSS JOIN LATERAL (SELECT 1 FROM quota_consumptions c
                                             WHERE c.org_id = %(org_id)s AND c.enquiry_id = r.enquiry_id
                                             LIMIT 1) AS hit)
    RETURNING version
), batch AS (
    SELECT c.* FROM ROWS FROM (jsonb_to_recordset(%(consumptions)s::jsonb)
           AS (enquiry_id text, user_id text, org_allotment int, org_remaining int, user_limit int,
               user_remaining int, on_trial bool, event_id uuid, envelope jsonb)) WITH ORDINALITY
           AS c(enquiry_id, user_id, org_allotment, org_remaining, user_limit, user_remaining, on_trial,
                event_id, envelope, n), cas
), month AS (
    INSERT INTO quota_org_months AS m (org_id, month_start, month_end, plan_monthly_reports, top_ups, used)
    SELECT %(org_id)s, %(month_start)s, %(month_end)s, %(month_plan)s, %(month_top_ups)s, %(granted)s FROM cas
     WHERE %(granted)s > 0
    ON CONFLICT (org_id, month_start) DO UPDATE SET used = m.used + excluded.used
    RETURNING m.used
), users AS (
    INSERT INTO quota_user_months AS u (org_id, month_start, user_id, used, limit_at_last_use)
    SELECT %(org_id)s, %(month_start)s, g.key, g.value::int, %(user_limit)s
      FROM jsonb_each_text(%(user_grants)s::jsonb) AS g, cas
    ON CONFLICT (org_id, month_start, user_id)
       DO UPDATE SET used = u.used + excluded.used, limit_at_last_use = excluded.limit_at_last_use
    RETURNING 1
), admitted AS (
    INSERT INTO quota_consumptions (org_id, enquiry_id, user_id, month_start, month_end, consumed_at, org_allotment,
                                    org_remaining, user_limit, user_remaining, on_trial, event_id)
    SELECT %(org_id)s, b.enquiry_id, b.user_id, %(month_start)s, %(month_end)s, %(consumed_at)s, b.org_allotment,
           b.org_remaining, b.user_limit, b.user_remaining, b.on_trial, b.event_id
      FROM batch b
    RETURNING event_id
), usage_events AS (
    """ + bundle_insert_sql(source="batch b", topic="%(usage_topic)s", key="%(message_key)s",
                            event_type="'usage.recorded'", event_id="b.event_id", envelope="b.envelope",
                            order="b.n") + """
    RETURNING 1
),""" + _ALERT_WRITES.format(gate=", cas") + """
SELECT (SELECT version FROM cas) AS version,
       (SELECT count(*) FROM admitted) AS admitted,
       (SELECT count(*) FROM usage_events) AS usage_events,
       (SELECT count(*) FROM users) AS users,
       (SELECT count(*) FROM month) AS months,
       (SELECT coalesce(array_agg(event_id), '{}') FROM alerts) AS alerts_inserted,
       (SELECT count(*) FROM alert_events) AS alert_events
"""

# Ends an org's open leases (all, or with `{only}` only the expired ones) and gives what they did not consume
# back to their months. Administrative writes revoke every lease of the org (a holder decides from memory on
# the configuration it was granted with: its next write is fenced and decided again on the exact path).
# NOTE: `back` reads `gone`, so the leases are ended (and locked) before any month row is touched.
REVOKE_LEASES_SQL = """
WITH gone AS (
    UPDATE quota_leases SET returned_at = now()
     WHERE org_id = %(org_id)s AND returned_at IS NULL{only}
    RETURNING month_start, granted - consumed AS rest
), back AS (
    UPDATE quota_org_months m SET leased = m.leased - g.rest
      FROM (SELECT month_start, sum(rest)::int AS rest FROM gone GROUP BY month_start) g
     WHERE m.org_id = %(org_id)s AND m.month_start = g.month_start
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone) AS leases, (SELECT count(*) FROM back) AS months
"""

# Alerts noticed by a batch that admitted nothing (e.g. every request hit the limit): no counter moves,
# so no compare-and-set is needed; the unique key keeps each alert once.
_ALERTS_ONLY_SQL = "WITH" + _ALERT_WRITES.format(gate="") + """
SELECT (SELECT coalesce(array_agg(event_id), '{}') FROM alerts) AS alerts_inserted,
       (SELECT count(*) FROM alert_events) AS alert_events
"""


# The cross-org group commit: the writes of several orgs (at most one per org) in ONE statement, so one
# round trip and one commit (one WAL flush) for every batch ready in the same event-loop turn. Each write
# is `_COMMIT_SQL` for its own org: its own compare-and-set (an org whose version moved writes nothing and
# gets no version back, the others commit), the same enquiry guard, counters, outbox rows and alerts. The
# statement is atomic, so a CHECK violation, a duplicate enquiry or a deadlock between two processes'
# groups aborts it whole; the caller then commits each write alone (`commit_batch`), which isolates it.
# NOTE: `locked` takes the orgs' row locks in org id order before any is updated (a row is only updated once
# `locked` returned it, and it returns them in order): two edge processes whose groups share orgs would
# otherwise lock them in plan order and could deadlock (PostgreSQL breaks it after deadlock_timeout, 1 s).
_GROUP_COMMIT_SQL = """
WITH w AS (
    SELECT * FROM jsonb_to_recordset(%(writes)s::jsonb)
           AS w(i int, org_id text, seen_version bigint, trial_delta int, month_start timestamptz,
                month_end timestamptz, month_plan int, month_top_ups int, granted int, consumed_at timestamptz,
                user_limit int, user_grants jsonb, consumptions jsonb, refused jsonb, alerts jsonb,
                usage_topic text, alert_topic text, message_key text)
), locked AS MATERIALIZED (
    SELECT o.org_id FROM quota_orgs o WHERE o.org_id IN (SELECT org_id FROM w) ORDER BY o.org_id FOR UPDATE
), cas AS (
    UPDATE quota_orgs o
       SET version = o.version + 1, trial_used = o.trial_used + w.trial_delta, updated_at = now()
      FROM w JOIN locked l ON l.org_id = w.org_id
     WHERE o.org_id = w.org_id AND o.version = w.seen_version
       AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements_text(w.refused) AS r(enquiry_id)
                        CROSS JOIN LATERAL (SELECT 1 FROM quota_consumptions c
                                             WHERE c.org_id = w.org_id AND c.enquiry_id = r.enquiry_id
                                             LIMIT 1) AS hit)
    RETURNING o.org_id, o.version
), won AS (
    SELECT w.* FROM w JOIN cas ON cas.org_id = w.org_id
), batch AS (
    SELECT won.org_id, won.month_start, won.month_end, won.consumed_at, won.usage_topic, won.message_key, c.*
      FROM won, ROWS FROM (jsonb_to_recordset(won.consumptions)
           AS (enquiry_id text, user_id text, org_allotment int, org_remaining int, user_limit int,
               user_remaining int, on_trial bool, event_id uuid, envelope jsonb)) WITH ORDINALITY
           AS c(enquiry_id, user_id, org_allotment, org_remaining, user_limit, user_remaining, on_trial,
                event_id, envelope, n)
), month AS (
    INSERT INTO quota_org_months AS m (org_id, month_start, month_end, plan_monthly_reports, top_ups, used)
    SELECT won.org_id, won.month_start, won.month_end, won.month_plan, won.month_top_ups, won.granted
      FROM won WHERE won.granted > 0
    ON CONFLICT (org_id, month_start) DO UPDATE SET used = m.used + excluded.used
    RETURNING 1
), users AS (
    INSERT INTO quota_user_months AS u (org_id, month_start, user_id, used, limit_at_last_use)
    SELECT won.org_id, won.month_start, g.key, g.value::int, won.user_limit
      FROM won, jsonb_each_text(won.user_grants) AS g
    ON CONFLICT (org_id, month_start, user_id)
       DO UPDATE SET used = u.used + excluded.used, limit_at_last_use = excluded.limit_at_last_use
    RETURNING 1
), admitted AS (
    INSERT INTO quota_consumptions (org_id, enquiry_id, user_id, month_start, month_end, consumed_at, org_allotment,
                                    org_remaining, user_limit, user_remaining, on_trial, event_id)
    SELECT b.org_id, b.enquiry_id, b.user_id, b.month_start, b.month_end, b.consumed_at, b.org_allotment,
           b.org_remaining, b.user_limit, b.user_remaining, b.on_trial, b.event_id
      FROM batch b
    RETURNING 1
), usage_events AS (
    """ + bundle_insert_sql(source="batch b", topic="b.usage_topic", key="b.message_key",
                            event_type="'usage.recorded'", event_id="b.event_id", envelope="b.envelope",
                            order="b.n") + """
    RETURNING 1
), alert_batch AS (
    SELECT won.org_id, won.consumed_at, won.alert_topic, won.message_key, a.*
      FROM won, jsonb_to_recordset(won.alerts)
           AS a(period_start timestamptz, kind text, threshold int, user_id text, used int, allotment int,
                reason text, event_id uuid, envelope jsonb)
), alerts AS (
    INSERT INTO quota_alerts (org_id, period_start, kind, threshold_percent, user_id, used, allotment, reason,
                              event_id, fired_at)
    SELECT a.org_id, a.period_start, a.kind, a.threshold, a.user_id, a.used, a.allotment, a.reason,
           a.event_id, a.consumed_at
      FROM alert_batch a
    ON CONFLICT (org_id, period_start, kind, threshold_percent, user_id) DO NOTHING
    RETURNING org_id, event_id, kind
), alert_events AS (
    INSERT INTO outbox (topic, message_key, event_id, event_type, envelope)
    SELECT b.alert_topic, b.message_key, a.event_id, a.kind, b.envelope
      FROM alerts a JOIN alert_batch b ON b.event_id = a.event_id
    RETURNING 1
)
SELECT w.i, cas.version,
       (SELECT coalesce(array_agg(a.event_id), '{}') FROM alerts a WHERE a.org_id = w.org_id) AS alerts_inserted
  FROM w LEFT JOIN cas ON cas.org_id = w.org_id
 ORDER BY w.i
"""


def _alert_params(alerts: Sequence[NewAlert]) -> dict[str, Any]:
    return {"alerts": _json([{
        "period_start": a.key.period_start, "kind": a.key.kind, "threshold": a.key.threshold_percent,
        "user_id": a.key.user_id, "used": a.used, "allotment": a.allotment, "reason": a.reason,
        "event_id": a.event_id, "envelope": orjson.Fragment(a.envelope_json)} for a in alerts])}


# Both longer than psycopg's conversion cache (`raw_statement`).
_COMMIT = RawStatement(_COMMIT_SQL)
_GROUP_COMMIT = RawStatement(_GROUP_COMMIT_SQL)


def _commit_params(write: BatchWrite) -> dict[str, Any]:
    return {
        "org_id": write.org_id, "seen_version": write.seen_version, "trial_delta": write.trial_delta,
        "month_start": write.month_start, "month_end": write.month_end,
        "month_plan": write.month_plan_reports, "granted": write.granted, "month_top_ups": write.month_top_ups,
        "consumed_at": write.consumed_at, "user_limit": write.user_limit,
        "user_grants": _json(write.user_grants),
        "consumptions": _json([{
            "enquiry_id": c.enquiry_id, "user_id": c.user_id, "org_allotment": c.org_allotment,
            "org_remaining": c.org_remaining, "user_limit": c.user_limit, "user_remaining": c.user_remaining,
            "on_trial": c.on_trial, "event_id": c.event_id, "envelope": orjson.Fragment(c.envelope_json),
        } for c in write.consumptions]),
        "usage_topic": write.usage_topic, "alert_topic": write.alert_topic,
        "message_key": write.message_key, "refused": _json(list(write.refused_enquiries)),
        **_alert_params(write.alerts),
    }


def _group_item(i: int, write: BatchWrite) -> dict[str, Any]:
    """One write of a group commit: ``_commit_params`` with its rows nested instead of as JSON text."""
    return {
        "i": i, "org_id": write.org_id, "seen_version": write.seen_version, "trial_delta": write.trial_delta,
        "month_start": write.month_start, "month_end": write.month_end,
        "month_plan": write.month_plan_reports, "granted": write.granted, "month_top_ups": write.month_top_ups,
        "consumed_at": write.consumed_at, "user_limit": write.user_limit, "user_grants": write.user_grants,
        "consumptions": [{
            "enquiry_id": c.enquiry_id, "user_id": c.user_id, "org_allotment": c.org_allotment,
            "org_remaining": c.org_remaining, "user_limit": c.user_limit, "user_remaining": c.user_remaining,
            "on_trial": c.on_trial, "event_id": c.event_id, "envelope": orjson.Fragment(c.envelope_json),
        } for c in write.consumptions],
        "refused": list(write.refused_enquiries),
        "alerts": [{
            "period_start": a.key.period_start, "kind": a.key.kind, "threshold": a.key.threshold_percent,
            "user_id": a.key.user_id, "used": a.used, "allotment": a.allotment, "reason": a.reason,
            "event_id": a.event_id, "envelope": orjson.Fragment(a.envelope_json)} for a in write.alerts],
        "usage_topic": write.usage_topic, "alert_topic": write.alert_topic, "message_key": write.message_key,
    }


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _load_params(org_id: str, month_start: datetime, users: Sequence[str], enquiries: Sequence[str]) -> dict[str, Any]:
    return {"org_id": org_id, "month_start": month_start, "users": _json(list(users)),
            "enquiries": _json(list(enquiries))}


def _snapshot(row: dict[str, Any]) -> OrgSnapshot:
    month = None
    if row["m_start"] is not None:
        month = MonthRow(row["m_start"], row["m_end"], row["m_plan"], row["m_top_ups"], row["m_used"],
                         row["m_leased"])
    alerts = frozenset(AlertKey(kind, datetime.fromisoformat(period), threshold, user)
                       for kind, period, threshold, user in row["alerts"])
    prior = {item["enquiry_id"]: _consumption(item) for item in row["prior"]}
    return OrgSnapshot(_org_row(row), month, dict(row["user_used"]), prior, alerts)


def _org_row(row: dict[str, Any]) -> OrgRow:
    return OrgRow(
        org_id=row["org_id"], plan_id=row["plan_id"], plan_monthly_reports=row["plan_monthly_reports"],
        per_user_monthly_limit=row["per_user_monthly_limit"], timezone=row["timezone"],
        trial_started_at=row["trial_started_at"], trial_reports=row["trial_reports"],
        trial_days=row["trial_days"], trial_used=row["trial_used"],
        alert_thresholds=tuple(row["alert_thresholds"]), subscription_id=row["subscription_id"],
        version=row["version"])


def _consumption(item: dict[str, Any]) -> ConsumptionRow:
    return ConsumptionRow(
        enquiry_id=item["enquiry_id"], user_id=item["user_id"],
        month_start=datetime.fromisoformat(item["month_start"]),
        month_end=datetime.fromisoformat(item["month_end"]),
        consumed_at=datetime.fromisoformat(item["consumed_at"]), org_allotment=item["org_allotment"],
        org_remaining=item["org_remaining"], user_limit=item["user_limit"],
        user_remaining=item["user_remaining"], on_trial=item["on_trial"])


class QuotaStore:
    """Async access to the quota tables through one psycopg pool (autocommit connections)."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    # --- the hot path -----------------------------------------------------------------------------------

    async def load(self, org_id: str, month_start: datetime, users: Sequence[str],
                   enquiries: Sequence[str]) -> OrgSnapshot:
        """Everything the rule needs for one batch; ``UnknownOrg`` when the org was never configured."""
        params = _load_params(org_id, month_start, users, enquiries)
        try:
            async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(_LOAD_SQL, params)
                row = await cur.fetchone()
        except psycopg.OperationalError as error:
            raise DatabaseUnavailableError(str(error)) from error
        if row is None:
            raise UnknownOrg(org_id)
        return _snapshot(row)

    async def decide_locked(self, org_id: str, month_start: datetime, users: Sequence[str],
                            enquiries: Sequence[str], decide: Callable[[OrgSnapshot], BatchWrite]
                            ) -> tuple[OrgSnapshot, BatchWrite, int, list[uuid.UUID]]:
        """Read the org with its row locked (``FOR UPDATE``), let ``decide`` build the write, apply it and
        commit: (snapshot, write, the org's version after, ids of alerts inserted).

        The path under contention, when optimistic writes keep losing to other edge processes: holding
        the lock from the read to the write makes progress certain (the other processes' writes wait on
        it, then miss on the version). The write is the same conditional statement as ``commit_batch``.
        Exceptions raised by ``decide`` roll the transaction back and propagate.
        """
        params = _load_params(org_id, month_start, users, enquiries)
        try:
            async with self._pool.connection() as conn, conn.transaction(), \
                    conn.cursor(row_factory=dict_row) as cur:
                # NOTE: the lock first, then the read, in two statements: a `FOR UPDATE` that waited for another
                # writer returns the org's newest row but the month, user and enquiry rows of its own older
                # snapshot, so a batch was decided on stale counters (a CHECK violation or a replay missed:
                # a 500; seen with two edges' group commits holding many orgs' locks at once)
                await cur.execute("SELECT 1 FROM quota_orgs WHERE org_id = %(org_id)s FOR UPDATE", params)
                await cur.execute(_LOAD_SQL + " FOR UPDATE OF o", params)
                row = await cur.fetchone()
                if row is None:
                    raise UnknownOrg(org_id)
                snapshot = _snapshot(row)
                write = decide(snapshot)
                version, inserted = snapshot.org.version, []
                if write.consumptions:
                    async with psycopg.AsyncRawCursor(conn, row_factory=dict_row) as raw:
                        await raw.execute(_COMMIT.sql, _COMMIT.args(_commit_params(write)))
                        done = await raw.fetchone()
                    assert done is not None
                    assert done["version"] is not None  # the row lock is ours: the version cannot move
                    version, inserted = int(done["version"]), list(done["alerts_inserted"])
                elif write.alerts:
                    await cur.execute(_ALERTS_ONLY_SQL, {
                        "org_id": org_id, "consumed_at": write.consumed_at, "alert_topic": write.alert_topic,
                        "message_key": write.message_key, **_alert_params(write.alerts)})
                    done = await cur.fetchone()
                    assert done is not None
                    inserted = list(done["alerts_inserted"])
        except psycopg.errors.UniqueViolation as error:
            raise DuplicateEnquiry(str(error)) from error
        except psycopg.errors.CheckViolation as error:
            raise QuotaStoreError(f"quota backstop refused the write: {error}") from error
        except psycopg.OperationalError as error:
            raise DatabaseUnavailableError(str(error)) from error
        return snapshot, write, version, inserted

    async def commit_batch(self, write: BatchWrite) -> tuple[int | None, list[uuid.UUID]]:
        """Apply ``write`` if the org is still at ``seen_version``: (the org's new version, ids of alerts
        inserted), or (None, []) when nothing was written because the org moved on.

        ``DuplicateEnquiry`` when another writer admitted one of the enquiries in the meantime (nothing
        was written); a CHECK violation is raised as ``QuotaStoreError`` (nothing was written either).
        """
        args = _COMMIT.args(_commit_params(write))
        try:
            async with self._pool.connection() as conn, psycopg.AsyncRawCursor(conn, row_factory=dict_row) as cur:
                await cur.execute(_COMMIT.sql, args)
                row = await cur.fetchone()
        except psycopg.errors.UniqueViolation as error:
            raise DuplicateEnquiry(str(error)) from error
        except psycopg.errors.CheckViolation as error:
            raise QuotaStoreError(f"quota backstop refused the write: {error}") from error
        except psycopg.OperationalError as error:
            raise DatabaseUnavailableError(str(error)) from error
        assert row is not None
        if row["version"] is None:
            return None, []
        return int(row["version"]), list(row["alerts_inserted"])

    async def commit_group(self, writes: Sequence[BatchWrite]) -> list[tuple[int | None, list[uuid.UUID]]]:
        """Apply several orgs' writes (at most one per org) in one statement, each only if its org is still
        at its ``seen_version``: per write, what ``commit_batch`` returns.

        All or nothing on an error: any driver error (a CHECK violation, a duplicate enquiry, a deadlock with
        another process's group, a lost connection) is raised as it is and nothing was written; the caller
        commits the writes one by one, which says which write was at fault.
        """
        if len({write.org_id for write in writes}) != len(writes):
            raise ValueError("a group commit holds at most one write per org")
        args = _GROUP_COMMIT.args({"writes": _json([_group_item(i, write) for i, write in enumerate(writes)])})
        async with self._pool.connection() as conn, psycopg.AsyncRawCursor(conn, row_factory=dict_row) as cur:
            await cur.execute(_GROUP_COMMIT.sql, args)
            rows = await cur.fetchall()
        return [(None, []) if row["version"] is None else (int(row["version"]), list(row["alerts_inserted"]))
                for row in rows]

    async def record_alerts(self, org_id: str, at: datetime, alerts: Sequence[NewAlert], alert_topic: str,
                            message_key: str) -> list[uuid.UUID]:
        """Insert alerts noticed without any admission; returns the ids actually inserted (new ones)."""
        if not alerts:
            return []
        params = {"org_id": org_id, "consumed_at": at, "alert_topic": alert_topic, "message_key": message_key,
                  **_alert_params(alerts)}
        try:
            async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(_ALERTS_ONLY_SQL, params)
                row = await cur.fetchone()
        except psycopg.OperationalError as error:
            raise DatabaseUnavailableError(str(error)) from error
        assert row is not None
        return list(row["alerts_inserted"])

    # --- administration (short locked transactions) -----------------------------------------------------

    async def configure(self, org_id: str, changes: dict[str, Any], *, create_timezone: str = "UTC",
                        month: tuple[datetime, datetime] | None = None,
                        month_plan_reports: int | None = None) -> OrgRow:
        """Set columns of the org row (creating it when missing) and bump its version, in one transaction.

        With ``month``, the month's counter row takes the new plan allotment and records what was already
        used as ``carried_over`` (a downgrade keeps the reports already run legal).
        """
        allowed = {"plan_id", "plan_monthly_reports", "per_user_monthly_limit", "timezone", "trial_started_at",
                   "trial_reports", "trial_days", "alert_thresholds", "subscription_id"}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"unknown quota_orgs columns {sorted(unknown)}")
        assignments = ", ".join(f"{column} = %({column})s" for column in changes)
        try:
            async with self._pool.connection() as conn, conn.transaction(), \
                    conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(
                    "INSERT INTO quota_orgs (org_id, timezone) VALUES (%(org_id)s, %(tz)s) "
                    "ON CONFLICT (org_id) DO NOTHING", {"org_id": org_id, "tz": create_timezone})
                await cur.execute(
                    f"UPDATE quota_orgs SET {assignments}{', ' if assignments else ''}"
                    "version = version + 1, updated_at = now() WHERE org_id = %(org_id)s RETURNING *",
                    {"org_id": org_id, **changes})
                row = await cur.fetchone()
                await cur.execute(REVOKE_LEASES_SQL.format(only=""), {"org_id": org_id})
                if month is not None:
                    await cur.execute(
                        "INSERT INTO quota_org_months AS m (org_id, month_start, month_end, plan_monthly_reports)"
                        " VALUES (%(org_id)s, %(start)s, %(end)s, %(plan)s)"
                        " ON CONFLICT (org_id, month_start) DO UPDATE"
                        " SET plan_monthly_reports = excluded.plan_monthly_reports, carried_over = m.used",
                        {"org_id": org_id, "start": month[0], "end": month[1], "plan": month_plan_reports})
        except psycopg.errors.CheckViolation as error:
            raise QuotaStoreError(str(error)) from error
        except psycopg.OperationalError as error:
            raise DatabaseUnavailableError(str(error)) from error
        assert row is not None
        return _org_row(row)

    async def org(self, org_id: str) -> OrgRow:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute("SELECT * FROM quota_orgs WHERE org_id = %(org_id)s", {"org_id": org_id})
            row = await cur.fetchone()
        if row is None:
            raise UnknownOrg(org_id)
        return _org_row(row)

    async def top_up(self, org_id: str, top_up_id: str, reports: int, month: tuple[datetime, datetime],
                     granted_by: str, at: datetime) -> tuple[bool, int]:
        """Add ``reports`` to the month's counter, once per ``top_up_id``: (applied now, month's top-ups).

        A replayed ``top_up_id`` changes nothing and returns the month's current total.
        """
        try:
            async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                await cur.execute("SELECT plan_monthly_reports FROM quota_orgs WHERE org_id = %s FOR UPDATE",
                                  (org_id,))
                org = await cur.fetchone()
                if org is None:
                    raise UnknownOrg(org_id)
                await cur.execute(REVOKE_LEASES_SQL.format(only=""), {"org_id": org_id})
                await cur.execute(
                    "INSERT INTO quota_top_ups (top_up_id, org_id, month_start, reports, expires_at, granted_by,"
                    " granted_at) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (top_up_id) DO NOTHING"
                    " RETURNING 1", (top_up_id, org_id, month[0], reports, month[1], granted_by, at))
                applied = await cur.fetchone() is not None
                if applied:
                    await cur.execute(
                        "INSERT INTO quota_org_months AS m (org_id, month_start, month_end, plan_monthly_reports,"
                        " top_ups) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (org_id, month_start) DO UPDATE"
                        " SET top_ups = m.top_ups + excluded.top_ups RETURNING top_ups",
                        (org_id, month[0], month[1], org[0], reports))
                    await cur.execute("UPDATE quota_orgs SET version = version + 1, updated_at = now()"
                                      " WHERE org_id = %s", (org_id,))
                await cur.execute("SELECT coalesce(sum(reports), 0) FROM quota_top_ups"
                                  " WHERE org_id = %s AND month_start = %s", (org_id, month[0]))
                total = await cur.fetchone()
        except psycopg.OperationalError as error:
            raise DatabaseUnavailableError(str(error)) from error
        assert total is not None
        return applied, int(total[0])

    async def top_up_history(self, org_id: str, month_start: datetime) -> list[dict[str, Any]]:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute("SELECT top_up_id, reports, expires_at, granted_by, granted_at FROM quota_top_ups"
                              " WHERE org_id = %s AND month_start = %s ORDER BY granted_at, top_up_id",
                              (org_id, month_start))
            return list(await cur.fetchall())

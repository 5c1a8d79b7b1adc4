"""Usage materialisation (the worker's hot path): meters, decoding and the batch write of events and hourly buckets.

Ingest (``UsageMaterializer.prepare`` then ``apply_lines``), once per consumed batch:
  decode raw bytes in one pass (orjson and plain checks; the models when in doubt) and apply the usage
  rules the edge and the SDK apply (``shared.contracts.usage_rules``: key = subscription_id, received_at not
  after the billing clock, the time window at received_at, quantity bounds, property shape, card numbers;
  what breaks one is refused with its code, for the DLQ: decoding is total) -> map event_type and
  properties to a meter quantity with the catalog -> COPY into a temporary table, inside the batch
  transaction -> one statement inserts the events ``ON CONFLICT DO NOTHING`` on (customer_id, transaction_id)
  and upserts the hourly aggregates of the rows really inserted, once per (subscription, meter, hour).
  Duplicates (in the batch or already stored) are counted, not errors.

The period close and the reads of the same buckets are in ``usage_close``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import sqlalchemy as sa

from shared.contracts.envelope import Envelope, EnvelopeError
from shared.contracts.messages import UsageRecorded, parse_payload
from shared.contracts.usage_rules import (
    MAX_EVENT_AGE,
    MAX_EVENT_LEAD,
    MAX_ID_LENGTH,
    MAX_QUANTITY,
    EventWindow,
    UsageProblem,
    as_utc,
    identifier_problem,
    key_problem,
    number_of,
    properties_problem,
    quantity_problem,
    received_at_problem,
)
from shared.domain.clock import Clock

log = logging.getLogger("billing_worker.usage")

USAGE_TYPE = "usage.recorded"


class UsageRefused(EnvelopeError):
    """A usage message that breaks a usage rule (``shared.contracts.usage_rules``): terminal, for the DLQ,
    whose ``error`` header starts with the rule's code (``key_mismatch: key: ...``)."""

    def __init__(self, problem: UsageProblem) -> None:
        super().__init__(str(problem))
        self.problem = problem

# ----------------------------------------------------------------------------------------------- meters


@dataclass(frozen=True, slots=True)
class MeterRule:
    meter_id: str
    value_property: str | None  # None: COUNT (each event counts 1)
    dimension: str | None = None  # the property whose value keys the price (the meter "<meter id>/<value>")

    def meter_of(self, properties: Mapping[str, Any]) -> str:
        """The meter id an event's usage is aggregated under: per value of the dimension when it has one.

        # NOTE: an event without a usable value (missing, not a string or an integer, too long) is billed at the
        # meter's default price rather than refused: the edge accepted it, and usage is never dropped here.
        """
        if self.dimension is None:
            return self.meter_id
        value = properties.get(self.dimension)
        if type(value) is int:
            value = str(value)
        if (not isinstance(value, str) or not value.strip() or len(value) > MAX_ID_LENGTH
                or any(ord(ch) < 32 for ch in value)):
            return self.meter_id
        return f"{self.meter_id}/{value}"


class MeterMap:
    """event_type -> the meter it feeds and how it is measured, from the catalog.

    # NOTE: one event type feeds at most one meter, so each stored event row carries a single
    # (meter, quantity) and every invoice line traces to whole events. A catalog that maps one event
    # type to two meters is refused at start.
    """

    def __init__(self, rules: Mapping[str, MeterRule]) -> None:
        self._rules = dict(rules)

    @classmethod
    def from_catalog(cls, catalog: Any) -> MeterMap:
        rules: dict[str, MeterRule] = {}
        for meter in catalog.meters.values():
            if meter.event_type in rules:
                raise ValueError(f"event type {meter.event_type!r} feeds two meters "
                                 f"({rules[meter.event_type].meter_id}, {meter.id}); one is allowed")
            prop = meter.value_property if str(meter.aggregation) == "sum" else None
            rules[meter.event_type] = MeterRule(str(meter.id), prop, getattr(meter, "dimension", None))
        return cls(rules)

    def rule_for(self, event_type: str) -> MeterRule | None:
        return self._rules.get(event_type)

    def rules(self) -> dict[str, MeterRule]:
        """event_type -> rule, for every metered event type."""
        return dict(self._rules)


def quantity_of(rule: MeterRule, properties: Mapping[str, Any]) -> Decimal:
    """The meter quantity of one event; a missing, non-numeric or out-of-bounds value is UsageRefused."""
    if rule.value_property is None:
        return Decimal(1)
    field = f"properties.{rule.value_property}"
    number = number_of(properties.get(rule.value_property))
    if number is None:
        raise UsageRefused(UsageProblem(field, f"meter {rule.meter_id} needs a number here", "missing_property"))
    problem = quantity_problem(number, field)
    if problem is not None:
        raise UsageRefused(problem)
    return number


# ----------------------------------------------------------------------------------------------- decode

_ENVELOPE_KEYS = frozenset({"event_id", "type", "schema_version", "occurred_at", "producer", "correlation_id",
                            "payload"})
_ENVELOPE_REQUIRED = _ENVELOPE_KEYS - {"correlation_id", "event_id"}
_PAYLOAD_KEYS = frozenset(UsageRecorded.model_fields)
_PAYLOAD_REQUIRED = frozenset(name for name, f in UsageRecorded.model_fields.items() if f.is_required())
_EMPTY: Mapping[str, Any] = {}

_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# RFC 3339 with an explicit offset: the form our producers write, read identically by pydantic,
# datetime.fromisoformat and PostgreSQL (other forms the models may accept take the careful path).
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)")


# NOTE: the instants of a batch repeat: an envelope's occurred_at is often its event's timestamp, and the edge
# stamps one received_at per request. A valid text's answer never changes, so the last few thousand valid ones
# are kept (an invalid one is parsed again: it leaves the hot path anyway): a hit is a dict lookup instead of
# a regular expression and a parse (about a fifth of the decoding's CPU in the materialisation bench).
_INSTANTS: dict[str, tuple[str, datetime]] = {}
_INSTANTS_KEPT = 4096


def _utc_instant(value: object) -> tuple[str, datetime] | None:
    """An aware RFC 3339 instant as (text PostgreSQL reads as the same instant, the instant); None unless
    certainly valid (None too for an instant with no UTC equivalent, e.g. 9999-12-31T23:59:59-01:00)."""
    if type(value) is not str:
        return None
    try:
        return _INSTANTS[value]
    except KeyError:
        pass
    found = _parse_instant(value)
    if found is not None:
        if len(_INSTANTS) >= _INSTANTS_KEPT:
            _INSTANTS.clear()
        _INSTANTS[value] = found
    return found


def _parse_instant(value: str) -> tuple[str, datetime] | None:
    if _RFC3339.fullmatch(value) is None:
        return None
    try:
        at = datetime.fromisoformat(value)  # the calendar check (no Feb 30, no 24:00, no leap second)
    except ValueError:
        return None
    if value.endswith("+00:00") or value.endswith("Z"):
        return value, at
    utc = as_utc(at)  # PostgreSQL caps offsets at 15:59; UTC is, once it exists
    return None if utc is None else (utc.isoformat(), utc)


# (customer_id, transaction_id, subscription_id, event_type, properties, timestamp, received_at, escaped,
# timestamp instant, received_at instant): the identifiers, both instants as UTC-safe RFC 3339 text and as
# datetimes; `escaped` is False when the raw JSON has no backslash at all, so no decoded string can hold a
# NUL, tab, newline, carriage return or backslash (JSON forbids raw control characters in strings; orjson
# enforces it).
_Checked = tuple[str, str, str, str, Mapping[str, Any], str, str, bool, datetime, datetime]


def _checked(raw: bytes) -> _Checked | None:
    """Conservative one-pass check of a v1 usage envelope's shape (orjson + plain checks).

    Returns its fields when the message is certainly valid against the ``Envelope`` + ``UsageRecorded``
    models and carries no NUL in an identifier, else None (the caller then runs the models themselves,
    which accept or explain). It never accepts what the models refuse. The usage rules (``_Rules``) are
    checked by the caller on either path.
    """
    try:
        env = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(env) is not dict or not _ENVELOPE_REQUIRED <= env.keys() <= _ENVELOPE_KEYS:
        return None
    version = env["schema_version"]
    if env["type"] != USAGE_TYPE or type(version) is not int or version != 1:
        return None
    if "event_id" in env:
        event_id = env["event_id"]
        if type(event_id) is not str or _CANONICAL_UUID.fullmatch(event_id) is None:
            return None
    corr = env.get("correlation_id")
    if corr is not None and (type(corr) is not str or len(corr) > 200):
        return None
    producer, occurred_at = env["producer"], env["occurred_at"]
    if type(producer) is not str or not 0 < len(producer) <= 100 or (
            (type(occurred_at) is not str or occurred_at not in _INSTANTS) and _utc_instant(occurred_at) is None):
        return None
    p = env["payload"]
    if type(p) is not dict or not _PAYLOAD_REQUIRED <= p.keys() <= _PAYLOAD_KEYS:
        return None
    customer, tx, sub, event_type = p["customer_id"], p["transaction_id"], p["subscription_id"], p["event_type"]
    if not (type(customer) is str and type(tx) is str and type(sub) is str and type(event_type) is str
            and 0 < len(tx) <= MAX_ID_LENGTH and 0 < len(event_type) <= 100
            and 0 < len(customer) <= MAX_ID_LENGTH and 0 < len(sub) <= MAX_ID_LENGTH):
        return None
    props = p.get("properties", _EMPTY)
    if type(props) is not dict:
        return None
    # the cache's hits inline (only str keys: other JSON values may be unhashable); a miss parses and caches
    ts_text, received_text = p["timestamp"], p["received_at"]
    timestamp = _INSTANTS.get(ts_text) if type(ts_text) is str else None
    if timestamp is None:
        timestamp = _utc_instant(ts_text)
    received_at = _INSTANTS.get(received_text) if type(received_text) is str else None
    if received_at is None:
        received_at = _utc_instant(received_text)
    if timestamp is None or received_at is None:
        return None
    escaped = b"\\" in raw
    if escaped and "\x00" in customer + tx + sub + event_type:
        return None  # the careful path refuses it with its reason
    return (customer, tx, sub, event_type, props, timestamp[0], received_at[0], escaped, timestamp[1],
            received_at[1])


class _NoKey:
    """The Kafka key of a value decoded on its own (``decode``): the key rule is not checked."""


NO_KEY = _NoKey()
_MessageKey = bytes | None | _NoKey


_LEAD_BACK = -MAX_EVENT_LEAD


class _Rules:
    """The usage rules beyond the message's shape (``shared.contracts.usage_rules``): key = subscription,
    ``received_at`` not after the billing clock, the time window at ``received_at``, the properties.

    # NOTE: the billing clock only moves forward, so a ``received_at`` the last reading already allows is
    # allowed now: the clock is read again only for a message stamped after the last reading (the first
    # batch, a batch after a clock advance, or a message claiming a future reception). ``DatabaseClock``
    # reads PostgreSQL; while it is unreachable the rule is skipped (logged): such a batch cannot commit
    # anyway (the clock lives in the database the batch commits to), and its re-prepared retry checks it.
    """

    def __init__(self, clock: Clock | None) -> None:
        self._clock = clock
        self._now: datetime | None = None
        self._received_by: datetime | None = None  # the latest received_at the last clock reading allows

    def problem(self, key: _MessageKey, subscription_id: str, properties: Mapping[str, Any], timestamp: datetime,
                received_at: datetime) -> UsageProblem | None:
        # Hot path: the common case is decided by comparisons; the rule functions say what is wrong.
        if key is not NO_KEY and key != subscription_id.encode():
            return key_problem(key, subscription_id)  # type: ignore[arg-type]
        if self._clock is not None and (self._received_by is None or received_at > self._received_by):
            problem = self._received_problem(received_at)
            if problem is not None:
                return problem
        # The window [received_at - MAX_EVENT_AGE, received_at + MAX_EVENT_LEAD] as one difference (no window
        # built per distinct received_at; the difference of two instants cannot overflow, where the window's
        # bounds are clamped: both say the same).
        if not _LEAD_BACK <= received_at - timestamp <= MAX_EVENT_AGE:
            return EventWindow.at(received_at).problem(timestamp)
        return properties_problem(properties)

    def _received_problem(self, received_at: datetime) -> UsageProblem | None:
        assert self._clock is not None
        try:
            now = self._clock.now()
        except sa.exc.SQLAlchemyError as error:
            log.warning("billing clock unreadable; received_at not checked in this batch",
                        extra={"error": str(error)[:300]})
            return None
        self._now, self._received_by = now, EventWindow.at(now).latest
        return received_at_problem(received_at, now)


@dataclass(frozen=True, slots=True)
class UsageItem:
    """One decoded usage event, ready to store."""

    customer_id: str
    transaction_id: str
    subscription_id: str
    event_type: str
    meter_id: str | None
    quantity: Decimal
    occurred_at: datetime
    received_at: datetime


def decode_usage(raw: bytes | None, meters: MeterMap, *, key: _MessageKey = NO_KEY,
                 clock: Clock | None = None) -> UsageItem:
    """Raw Kafka value (and its key, when known) -> UsageItem.

    A conservative one-pass check (orjson) accepts the common shape; anything else (another schema version,
    an invalid message) goes through the models (``Envelope.from_bytes``, which applies upcasters, and
    ``UsageRecorded``). Either way the usage rules follow. What is refused raises EnvelopeError (terminal:
    the DLQ), UsageRefused when a usage rule says why.
    """
    return _decode(raw, meters, key, _Rules(clock))


def _decode(raw: bytes | None, meters: MeterMap, key: _MessageKey, rules: _Rules) -> UsageItem:
    if raw is None:
        raise EnvelopeError("empty message value")
    fields = _checked(raw)
    if fields is None:
        return _decode_general(raw, meters, key, rules)
    customer, tx, sub, event_type, props, _, _, _, timestamp, received_at = fields
    problem = rules.problem(key, sub, props, timestamp, received_at)
    if problem is not None:
        raise UsageRefused(problem)
    return _item(customer, tx, sub, event_type, props, timestamp, received_at, meters)


def _decode_general(raw: bytes, meters: MeterMap, key: _MessageKey, rules: _Rules) -> UsageItem:
    envelope = Envelope.from_bytes(raw)
    if envelope.type != USAGE_TYPE:
        raise EnvelopeError(f"unexpected message type {envelope.type!r} on the usage topic")
    p = parse_payload(envelope)
    if not isinstance(p, UsageRecorded):
        raise EnvelopeError(f"unexpected payload {type(p).__name__}")
    problem = (identifier_problem("customer_id", p.customer_id)
               or identifier_problem("subscription_id", p.subscription_id)
               or identifier_problem("transaction_id", p.transaction_id)
               or identifier_problem("event_type", p.event_type, 100)
               or rules.problem(key, p.subscription_id, p.properties, p.timestamp, p.received_at))
    if problem is not None:
        raise UsageRefused(problem)
    return _item(p.customer_id, p.transaction_id, p.subscription_id, p.event_type, p.properties,
                 p.timestamp, p.received_at, meters)


def _item(customer_id: str, transaction_id: str, subscription_id: str, event_type: str,
          properties: Mapping[str, Any], timestamp: datetime, received_at: datetime,
          meters: MeterMap) -> UsageItem:
    """The item of a message that met every rule (both instants have a UTC equivalent)."""
    rule = meters.rule_for(event_type)
    quantity = quantity_of(rule, properties) if rule is not None else Decimal(0)
    return UsageItem(customer_id, transaction_id, subscription_id, event_type,
                     rule.meter_of(properties) if rule is not None else None, quantity,
                     timestamp.astimezone(UTC), received_at.astimezone(UTC))


# ----------------------------------------------------------------------------------------------- COPY rows
# A batch reaches PostgreSQL as COPY text lines (tab-separated, \N for NULL) of the temporary table's
# columns: customer_id, transaction_id, subscription_id, event_type, meter_id, quantity, occurred_at,
# received_at. The hot path renders them straight from the checked JSON (no per-event objects).

_NULL = "\\N"


def _copy_text(value: str) -> str:
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return value


def _item_line(it: UsageItem) -> str:
    return (f"{_copy_text(it.customer_id)}\t{_copy_text(it.transaction_id)}\t{_copy_text(it.subscription_id)}\t"
            f"{_copy_text(it.event_type)}\t{_copy_text(it.meter_id) if it.meter_id is not None else _NULL}\t"
            f"{it.quantity}\t{it.occurred_at.isoformat()}\t{it.received_at.isoformat()}\n")


def _fast_line(raw: bytes, meters: Mapping[str, tuple[str, MeterRule]], key: _MessageKey,
               rules: _Rules) -> str | None:
    """The COPY line of a usage message whose shape the one-pass check certainly accepts, else None (the
    careful path decides); UsageRefused when it breaks a usage rule."""
    fields = _checked(raw)
    if fields is None:
        return None
    customer, tx, sub, event_type, props, timestamp, received_at, escaped, timestamp_at, received_at_at = fields
    problem = rules.problem(key, sub, props, timestamp_at, received_at_at)
    if problem is not None:
        raise UsageRefused(problem)
    meter = meters.get(event_type)
    if meter is not None and meter[1].dimension is not None:
        return None  # a dimensional meter's id depends on a property: the careful path builds it
    if meter is None:
        meter_text, quantity = _NULL, "0"
    else:
        meter_text, rule = meter
        if rule.value_property is None:
            quantity = "1"
        else:
            value = props.get(rule.value_property)
            if type(value) is int and 0 <= value < MAX_QUANTITY:
                quantity = str(value)
            else:
                quantity = str(quantity_of(rule, props))
    if escaped:
        customer, tx, sub, event_type = _copy_text(customer), _copy_text(tx), _copy_text(sub), _copy_text(event_type)
    return f"{customer}\t{tx}\t{sub}\t{event_type}\t{meter_text}\t{quantity}\t{timestamp}\t{received_at}\n"


# ----------------------------------------------------------------------------------------------- apply


@dataclass
class UsageStats:
    """Counters of one applied batch (and, summed, of a process: exported as metrics)."""

    received: int = 0
    inserted: int = 0
    duplicates: int = 0
    unmetered: int = 0
    aggregate_upserts: int = 0

    def add(self, other: UsageStats) -> None:
        self.received += other.received
        self.inserted += other.inserted
        self.duplicates += other.duplicates
        self.unmetered += other.unmetered
        self.aggregate_upserts += other.aggregate_upserts


@dataclass(frozen=True, slots=True)
class PreparedUsage:
    """A batch of usage values rendered for COPY (``lines[k]`` comes from ``values[accepted[k]]``), and the
    values refused with their reason (``(index, error)``): terminal, for the DLQ."""

    lines: list[str]
    accepted: list[int]
    refused: list[tuple[int, EnvelopeError]]


_TEMP_TABLE = "usage_incoming"
_CREATE_TEMP = sa.text(f"""
CREATE TEMP TABLE IF NOT EXISTS {_TEMP_TABLE} (
    customer_id text, transaction_id text, subscription_id text, event_type text, meter_id text,
    quantity numeric, occurred_at timestamptz, received_at timestamptz
) ON COMMIT DELETE ROWS""")
_COPY = (f"COPY {_TEMP_TABLE} (customer_id, transaction_id, subscription_id, event_type, meter_id, quantity, "
         "occurred_at, received_at) FROM STDIN")

# One round trip: insert new events (duplicates, in the batch or stored, skipped by the primary key), then
# upsert one aggregate row per (subscription, meter, hour) from the rows actually inserted.
_MATERIALIZE = sa.text(f"""
WITH ins AS (
    INSERT INTO usage_events (customer_id, transaction_id, subscription_id, event_type, meter_id,
                              quantity, occurred_at, received_at)
    SELECT customer_id, transaction_id, subscription_id, event_type, meter_id, quantity, occurred_at,
           received_at
    FROM {_TEMP_TABLE}
    ON CONFLICT DO NOTHING
    RETURNING subscription_id, meter_id, quantity, occurred_at
), agg AS (
    SELECT subscription_id, meter_id, date_trunc('hour', occurred_at, 'UTC') AS bucket_start,
           sum(quantity) AS quantity, count(*) AS events
    FROM ins WHERE meter_id IS NOT NULL
    GROUP BY 1, 2, 3
), up AS (
    INSERT INTO usage_aggregates (subscription_id, meter_id, bucket_start, quantity, event_count)
    SELECT subscription_id, meter_id, bucket_start, quantity, events FROM agg
    ORDER BY 1, 2, 3
    ON CONFLICT (subscription_id, meter_id, bucket_start) DO UPDATE
       SET quantity = usage_aggregates.quantity + excluded.quantity,
           event_count = usage_aggregates.event_count + excluded.event_count,
           updated_at = now()
    RETURNING 1
)
SELECT (SELECT count(*) FROM ins) AS inserted, (SELECT count(*) FROM ins WHERE meter_id IS NULL) AS unmetered,
       (SELECT count(*) FROM up) AS upserts""")
_EMPTY_TEMP = sa.text(f"TRUNCATE {_TEMP_TABLE}")


def _copy_lines(conn: sa.Connection, lines: Sequence[str]) -> None:
    """COPY the batch into the temporary table as one text buffer (no per-row driver calls)."""
    dbapi = conn.connection.dbapi_connection
    if dbapi is None:
        raise RuntimeError("the connection is closed")
    with dbapi.cursor() as cur, cur.copy(_COPY) as copy:  # type: ignore[attr-defined]  # psycopg 3 cursor
        copy.write("".join(lines).encode())


class UsageMaterializer:
    """Applies usage to PostgreSQL in the caller's transaction (exactly once with the offsets).

    Hot path: ``prepare(values, keys)`` (CPU only; it reads the billing clock only when a message is stamped
    after the last reading: the consumer runs it for the next batch while PostgreSQL works on the current
    one), then ``apply_lines(conn, prepared.lines)`` in the transaction. Without a clock (tools, tests
    that apply usage by hand) the received_at rule is not checked.
    """

    def __init__(self, meters: MeterMap, clock: Clock | None = None) -> None:
        self.meters = meters
        self.totals = UsageStats()
        self._meters = {event_type: (_copy_text(rule.meter_id), rule)
                        for event_type, rule in meters.rules().items()}
        self._rules = _Rules(clock)

    def use_meters(self, meters: MeterMap) -> None:
        """Decode with these meters from the next batch on (the stored catalog changed: a meter was added)."""
        self._meters = {event_type: (_copy_text(rule.meter_id), rule) for event_type, rule in meters.rules().items()}
        self.meters = meters

    def decode(self, raw: bytes | None, key: _MessageKey = NO_KEY) -> UsageItem:
        return _decode(raw, self.meters, key, self._rules)

    def prepare(self, values: Sequence[bytes | None], keys: Sequence[bytes | None] | None = None) -> PreparedUsage:
        """Decode a batch: ``values[i]`` with its Kafka key ``keys[i]`` (None: keys are not checked).

        Total: every value becomes a COPY line or a refusal with its reason; nothing it raises stops the
        batch."""
        lines: list[str] = []
        accepted: list[int] = []
        refused: list[tuple[int, EnvelopeError]] = []
        meters, rules = self._meters, self._rules
        for index, raw in enumerate(values):
            key = NO_KEY if keys is None else keys[index]
            try:
                line = _fast_line(raw, meters, key, rules) if raw is not None else None
                if line is None:
                    line = _item_line(_decode(raw, self.meters, key, rules))
            except EnvelopeError as error:
                refused.append((index, error))
                continue
            except Exception as error:
                # NOTE: decoding is CPU only (the clock's outage is handled in _Rules), so whatever else it
                # raises (a RecursionError, a bug of ours) is about these bytes and would recur on every
                # retry: the message is refused, the partition goes on.
                log.exception("usage decoding failed unexpectedly; the message is dead-lettered")
                refused.append((index, EnvelopeError(f"undecodable usage message: {type(error).__name__}: "
                                                     f"{str(error)[:300]}")))
                continue
            lines.append(line)
            accepted.append(index)
        return PreparedUsage(lines, accepted, refused)

    def apply(self, conn: sa.Connection, items: Sequence[UsageItem]) -> UsageStats:
        return self.apply_lines(conn, [_item_line(it) for it in items])

    def apply_lines(self, conn: sa.Connection, lines: Sequence[str]) -> UsageStats:
        stats = UsageStats(received=len(lines))
        if not lines:
            return stats
        conn.execute(_CREATE_TEMP)
        _copy_lines(conn, lines)
        row = conn.execute(_MATERIALIZE).one()
        # ON COMMIT DELETE ROWS only fires at commit; a savepoint-level retry needs an empty table now.
        conn.execute(_EMPTY_TEMP)
        stats.inserted = int(row.inserted)
        stats.unmetered = int(row.unmetered)
        stats.aggregate_upserts = int(row.upserts)
        stats.duplicates = stats.received - stats.inserted
        return stats

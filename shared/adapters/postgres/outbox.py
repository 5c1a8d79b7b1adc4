"""Writing to the transactional outbox: one row per message (or one bundle of messages), in the caller's
transaction.

A message that must reach Kafka together with PostgreSQL rows is written here, in the same transaction as
those rows; the relay (`shared.adapters.kafka.outbox_relay`) publishes it in id order once the transaction
committed. Nothing is produced to Kafka for a transaction that rolled back, and nothing committed is lost
when Kafka is down at that instant.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from shared.adapters.postgres.schema.core import MIXED_BUNDLE, outbox
from shared.contracts.envelope import Envelope

# Set after a transaction of this process committed outbox rows (`rows_committed`): the relay of the same
# process (shared/adapters/kafka/outbox_relay.py) publishes at once instead of at its next idle poll, since a
# command's caller waits for its outcome behind it. Rows committed by other processes wait for that poll.
ROWS_COMMITTED = threading.Event()


def rows_committed() -> None:
    """Tell this process's outbox relay that outbox rows were just committed."""
    ROWS_COMMITTED.set()


def outbox_row(envelope: Envelope, *, key: str, topic: str) -> dict[str, Any]:
    """The row of one message; `topic` is the logical name (the relay applies the settings' prefix)."""
    return {"topic": topic, "message_key": key, "event_id": envelope.event_id, "event_type": envelope.type,
            "envelope": envelope.model_dump(mode="json")}


def add_to_outbox(conn: sa.Connection, messages: Iterable[tuple[str, str, Envelope]]) -> None:
    """Write (topic, key, envelope) rows in the caller's transaction; a row whose event_id is already in the
    outbox is a no-op, so a retried request that derives its ids deterministically writes each message once."""
    rows = [outbox_row(envelope, key=key, topic=topic) for topic, key, envelope in messages]
    if rows:
        conn.execute(insert(outbox).on_conflict_do_nothing(index_elements=["event_id"]), rows)


def add_documents_to_outbox(conn: sa.Connection, messages: Iterable[tuple[str, str, uuid.UUID, str, Any]]) -> None:
    """Like `add_to_outbox` for messages whose value is a JSON document but not an envelope (the relay sends
    the document as the value): (topic, key, event_id, event_type, document)."""
    rows = [{"topic": topic, "message_key": key, "event_id": event_id, "event_type": event_type,
             "envelope": document} for topic, key, event_id, event_type, document in messages]
    if rows:
        conn.execute(insert(outbox).on_conflict_do_nothing(index_elements=["event_id"]), rows)


def bundle_insert_sql(*, source: str, topic: str, key: str, event_type: str, event_id: str, envelope: str,
                      order: str, mixed_types: bool = False) -> str:
    """SQL (an ``INSERT ... SELECT``, to end a CTE or a statement) writing the messages of ``source`` as one
    outbox bundle per (topic, key, event type): ``envelope`` the JSON array of their envelopes in ``order``,
    ``event_id`` the first one's (so the bundle is unique where its first message is), and the elements'
    lengths, event ids and (``mixed_types``) types, which the relay cuts the array by (`bundle_messages`). A
    group of one message is written as a plain row (a bundle would only cost the relay a parse). The relay
    sends each element as its own message, in order; the arguments are SQL expressions over ``source`` (the
    envelope's of type json). With ``mixed_types`` the bundles are per (topic, key): a bundle of several event
    types is stored with the type ``MIXED_BUNDLE``, and each element is sent with its own type."""
    if mixed_types:
        chosen_type = (f"CASE WHEN count(*) > 1 THEN '{MIXED_BUNDLE}' "
                       f"ELSE (array_agg({event_type}))[1] END")
        types = f"CASE WHEN count(*) > 1 THEN array_agg({event_type} ORDER BY {order}) END"
        group_by = "1, 2"
    else:
        chosen_type, types, group_by = event_type, "NULL", "1, 2, 4"  # topic, key, type: by position
    return (f"INSERT INTO outbox (topic, message_key, event_id, event_type, envelope, bundled,\n"
            f"                    part_lengths, part_event_ids, part_types)\n"
            f"    SELECT {topic}, {key}, (array_agg({event_id} ORDER BY {order}))[1], {chosen_type},\n"
            f"           CASE WHEN count(*) > 1 THEN json_agg({envelope} ORDER BY {order})\n"
            f"                ELSE CAST((array_agg({envelope}))[1] AS json) END,\n"
            f"           count(*) > 1,\n"
            f"           CASE WHEN count(*) > 1\n"
            f"                THEN array_agg(length(CAST({envelope} AS text)) ORDER BY {order}) END,\n"
            f"           CASE WHEN count(*) > 1 THEN array_agg(CAST({event_id} AS uuid) ORDER BY {order}) END,\n"
            f"           {types}\n"
            f"      FROM {source}\n"
            f"     GROUP BY {group_by}")


# json_agg writes an array as "[" + the elements' own text joined by ", " + "]" (PostgreSQL's json_agg_transfn).
_SEPARATOR = ", "


def bundle_messages(text: str, lengths: Sequence[int] | None, event_ids: Sequence[str] | None,
                    types: Sequence[str] | None, event_type: str, event_id: str) -> list[tuple[str, str, str]]:
    """The (event_id, event_type, envelope text) of each message of a bundle row (its stored envelope ``text``,
    part columns, ``event_type`` and ``event_id``), cut by its elements' lengths: each element's text exactly as
    stored, without parsing it. A bundle whose part columns are missing or do not agree, or whose lengths do not
    cut ``text`` at its separators, is parsed instead (its elements are then sent re-encoded: the same JSON), as
    the ``outbox_messages`` view reads it: an element without an event_id or type gets the row's."""
    cut = _cut(text, lengths, event_ids, types, event_type)
    if cut is not None:
        return cut
    # json, not orjson: a stored envelope may hold an integer orjson refuses (beyond 64 bits)
    return [(str(e.get("event_id") or event_id),
             str(e.get("type") or event_type) if event_type == MIXED_BUNDLE else event_type,
             json.dumps(e, ensure_ascii=False, separators=(",", ":"))) for e in json.loads(text)]


def _cut(text: str, lengths: Sequence[int] | None, event_ids: Sequence[str] | None, types: Sequence[str] | None,
         event_type: str) -> list[tuple[str, str, str]] | None:
    """`bundle_messages` by the part columns, or None when they do not fit ``text``."""
    if not lengths or event_ids is None or len(event_ids) != len(lengths) or text[:1] != "[":
        return None
    if (types is None and event_type == MIXED_BUNDLE) or (types is not None and len(types) != len(lengths)):
        return None
    messages, start = [], 1
    for n, length in enumerate(lengths):
        end = start + length
        if text[end:end + 2] != _SEPARATOR and end != len(text) - 1:
            return None
        messages.append((event_ids[n], types[n] if types is not None else event_type, text[start:end]))
        start = end + 2
    return messages if start == len(text) + 1 and text[-1] == "]" else None

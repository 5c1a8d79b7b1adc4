"""The outbox relay publishes unpublished rows in id order per key and marks them published."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer

from services.billing_worker.adapters.billing_repository import COPY_THRESHOLD
from services.billing_worker.adapters.outbox import add_outbox, add_unit_of_work_outbox
from shared.adapters.kafka.outbox_relay import OutboxRelay
from shared.adapters.kafka.producer import KafkaProducer
from shared.adapters.postgres import outbox as outbox_module
from shared.adapters.postgres.engine import make_engine
from shared.adapters.postgres.outbox import add_to_outbox, bundle_insert_sql, bundle_messages
from shared.adapters.postgres.schema.core import MIXED_BUNDLE, outbox
from shared.contracts import topics
from shared.contracts.envelope import Envelope, new_envelope

pytestmark = pytest.mark.integration


def test_outbox_rows_are_published_in_order_per_key_with_their_event_id_and_marked_published(settings, engine):
    written: dict[str, list[str]] = {"sub_a": [], "sub_b": []}
    with engine.begin() as conn:
        for n in range(300):
            key = "sub_a" if n % 3 else "sub_b"
            env = new_envelope("invoice.finalized", {"invoice_id": f"in_{n}", "n": n}, producer="test",
                               occurred_at=datetime(2026, 2, 1, tzinfo=UTC))
            add_outbox(conn, env, key=key)
            written[key].append(str(env.event_id))

    relay = OutboxRelay(engine, KafkaProducer(settings, client_id="relay-test"), batch=128)
    published = 0
    while (sent := relay.publish_round()) > 0:
        published += sent
    relay.stop()

    consumer = Consumer(settings.kafka_consumer_config(f"relay-{uuid.uuid4().hex}"))
    consumer.subscribe([settings.topic(topics.BILLING_EVENTS)])
    received: dict[str, list[str]] = {"sub_a": [], "sub_b": []}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                env = Envelope.from_bytes(msg.value())
                assert dict(msg.headers())["event_id"] == str(env.event_id).encode()
                received[msg.key().decode()].append(str(env.event_id))
                if sum(map(len, received.values())) == 300:
                    break
    finally:
        consumer.close()

    assert published == 300
    assert [len(v) for v in received.values()] == [len(v) for v in written.values()]
    assert received == written
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).where(outbox.c.published_at.is_(None))).scalar_one() == 0


def _write_bundle(conn: sa.Connection, key: str, envelopes: list[Envelope]) -> None:
    conn.execute(sa.text(bundle_insert_sql(
        source="unnest(CAST(:ids AS uuid[]), CAST(:envs AS text[])) WITH ORDINALITY AS b(event_id, envelope, n)",
        topic=":topic", key=":key", event_type="'usage.recorded'", event_id="b.event_id",
        envelope="CAST(b.envelope AS json)", order="b.n")),
        {"ids": [e.event_id for e in envelopes], "envs": [e.model_dump_json() for e in envelopes],
         "topic": topics.USAGE, "key": key})


def test_a_bundle_is_sent_as_its_messages_in_order_between_the_rows_around_it(settings, engine):
    def usage(n: int) -> Envelope:
        return new_envelope("usage.recorded", {"transaction_id": f"t{n}"}, producer="test",
                            occurred_at=datetime(2026, 2, 1, tzinfo=UTC))

    written: list[Envelope] = []
    with engine.begin() as conn:
        # a plain row, a bundle of three, a group of one (written plain), a bundle of three
        for part, size in enumerate((1, 3, 1, 3)):
            batch = [usage(len(written) + i) for i in range(size)]
            if part:
                _write_bundle(conn, "org_bundle", batch)
            else:
                add_to_outbox(conn, [(topics.USAGE, "org_bundle", batch[0])])
            written += batch
        bundled = conn.execute(sa.select(outbox.c.bundled).where(outbox.c.message_key == "org_bundle")
                               .order_by(outbox.c.id)).scalars().all()
        listed = conn.execute(sa.text("SELECT event_id FROM outbox_messages WHERE message_key = 'org_bundle'"
                                      " ORDER BY id, part")).scalars().all()
    assert bundled == [False, True, False, True]
    assert listed == [e.event_id for e in written]

    relay = OutboxRelay(engine, KafkaProducer(settings, client_id="relay-bundle-test"), batch=2)
    rounds = []
    while (sent := relay.publish_round()) > 0:
        rounds.append(sent)
    relay.stop()
    assert rounds == [2, 2]  # rows, not messages: a bundle is never split across rounds
    assert relay.published == 8

    consumer = Consumer(settings.kafka_consumer_config(f"relay-{uuid.uuid4().hex}"))
    consumer.subscribe([settings.topic(topics.USAGE)])
    received: list[tuple[bytes, dict[str, bytes], Envelope]] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(received) < len(written):
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None and msg.key() == b"org_bundle":
                received.append((msg.key(), dict(msg.headers()), Envelope.from_bytes(msg.value())))
    finally:
        consumer.close()
    assert [env for _, _, env in received] == written
    assert [headers for _, headers, _ in received] == [
        {"type": b"usage.recorded", "event_id": str(e.event_id).encode()} for e in written]
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).where(outbox.c.published_at.is_(None))).scalar_one() == 0


def test_a_bundle_cut_by_its_lengths_is_the_view_of_its_messages_text_for_text(engine, monkeypatch):
    """The lengths PostgreSQL wrote with a bundle cut json_agg's text exactly (characters outside ASCII, ", "
    and brackets inside strings), for plain and mixed bundles: the relay sends what the view lists, unparsed."""
    tag = uuid.uuid4().hex[:8]
    odd = {"note": "Zoë – 東京, [a], {b}", "quote": 'say "hi", then: ]'}
    usage = [new_envelope("usage.recorded", {"transaction_id": f"t{n}", **odd}, producer="test",
                          occurred_at=datetime(2026, 2, 1, tzinfo=UTC)) for n in range(3)]
    run = [(topics.BILLING_EVENTS, f"sub_{tag}_{i % 2}",
            new_envelope(("credits.granted", "invoice.finalized")[i % 3 % 2], {"i": i, **odd}, producer="test",
                         occurred_at=datetime(2026, 2, 1, tzinfo=UTC)))
           for i in range(COPY_THRESHOLD)]
    with engine.begin() as conn:
        _write_bundle(conn, f"org_{tag}", usage)
        add_unit_of_work_outbox(conn, run)
        keys = [f"org_{tag}", f"sub_{tag}_0", f"sub_{tag}_1"]
        stored = conn.execute(sa.text(
            "SELECT id, envelope::text, part_lengths, part_event_ids::text[], part_types, event_type, event_id::text"
            " FROM outbox"
            " WHERE message_key = ANY(:keys) AND bundled ORDER BY id"), {"keys": keys}).all()
        listed = conn.execute(sa.text(
            "SELECT id, event_id::text, event_type, envelope::text FROM outbox_messages"
            " WHERE message_key = ANY(:keys) ORDER BY id, part"), {"keys": keys}).all()
    assert len(stored) == 3 and all(row.part_lengths for row in stored)
    monkeypatch.setattr(outbox_module, "json", None)  # cut, never parsed
    cut = [(id_, *message) for id_, text, lengths, ids, types, event_type, event_id in stored
           for message in bundle_messages(text, lengths, ids, types, event_type, event_id)]
    assert cut == [tuple(row) for row in listed]
    assert len(cut) == 3 + COPY_THRESHOLD


def test_a_relay_that_cannot_take_the_relay_lock_publishes_and_marks_nothing(settings, engine):
    with engine.begin() as conn:
        env = new_envelope("invoice.finalized", {"invoice_id": "in_locked"}, producer="test",
                           occurred_at=datetime(2026, 2, 1, tzinfo=UTC))
        add_outbox(conn, env, key="sub_locked")
    relay = OutboxRelay(engine, KafkaProducer(settings, client_id="relay-lock-test"), batch=10)
    try:
        with engine.begin() as holder:  # another relay's round in progress holds the schema's relay lock
            assert holder.execute(sa.text(
                "SELECT pg_try_advisory_xact_lock(hashtext(current_schema() || '/outbox-relay'))")).scalar_one()
            assert relay.publish_round() == 0
            with engine.connect() as conn:
                assert conn.execute(sa.select(outbox.c.published_at)
                                    .where(outbox.c.event_id == env.event_id)).scalar_one() is None
        assert relay.publish_round() >= 1  # the lock released: this relay publishes it
    finally:
        relay.stop()
    with engine.connect() as conn:
        assert conn.execute(sa.select(outbox.c.published_at)
                            .where(outbox.c.event_id == env.event_id)).scalar_one() is not None


def _envelopes(n: int, tag: str) -> list[tuple[str, str, Envelope]]:
    return [(topics.BILLING_EVENTS, f"sub_{tag}", new_envelope(
        "invoice.finalized", {"invoice_id": f"in_{tag}_{i}"}, producer="test",
        occurred_at=datetime(2026, 2, 1, tzinfo=UTC))) for i in range(n)]


def _drain(relay: OutboxRelay) -> int:
    published = 0
    while (sent := relay.publish_round()) > 0:
        published += sent
    return published


def _unpublished_index_reads(engine: sa.Engine, relay_engine: sa.Engine) -> int:
    """Index entries the scans of the outbox's unpublished index returned so far, the relay's included: its
    one pooled connection is closed first, and a backend flushes its counts as it exits."""
    with relay_engine.connect() as conn:
        pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    relay_engine.dispose()
    with engine.connect() as conn:
        deadline = time.monotonic() + 10
        while conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"), {"p": pid}).scalar_one():
            assert time.monotonic() < deadline, "the relay's backend did not exit"
            conn.rollback()
            time.sleep(0.02)
        conn.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
        return int(conn.execute(sa.text(
            "SELECT idx_tup_read FROM pg_stat_user_indexes WHERE schemaname = current_schema() "
            "AND indexrelname = 'ix_outbox_unpublished'")).scalar_one())


def test_a_round_reads_on_from_what_it_published_not_through_rows_published_behind_a_long_transaction(
        settings, engine):  # type: ignore[no-untyped-def]
    """A published row keeps its entry in the unpublished index until no transaction older than its mark runs.
    Read from the bottom, each round walked them all (a billing run's batches last seconds: 3-98 ms a round
    that found 0-6 rows, 549-5,015 index pages)."""
    relay_engine = make_engine(settings, pool_size=1)  # one backend, whose counts are flushed as it exits
    relay = OutboxRelay(relay_engine, KafkaProducer(settings, client_id="relay-cursor-test"), batch=2000)
    try:
        _drain(relay)
        _drain(relay)  # a second pass: the first one's gap below its rows is forgotten
        with engine.connect() as old:  # a transaction with an xid, left open: nothing published can be cleaned up
            old.execute(sa.text("SELECT pg_current_xact_id()"))
            with engine.begin() as conn:
                add_to_outbox(conn, _envelopes(3000, "walk"))
            assert _drain(relay) == 3000
            with engine.begin() as conn:
                add_to_outbox(conn, _envelopes(1, "next"))
            before = _unpublished_index_reads(engine, relay_engine)
            assert relay.publish_round() == 1
            read = _unpublished_index_reads(engine, relay_engine) - before
            old.rollback()
    finally:
        relay.stop()
        relay_engine.dispose()
    assert 1 <= read < 10, read  # 3,302 before the cursor


def test_a_row_committed_after_rows_with_higher_ids_were_published_is_published_next(settings, engine):
    """Ids are given at insert, so a transaction that commits late leaves rows below what the relay already
    published; the relay reads that gap again until the transaction ended, and publishes them in id order."""
    relay = OutboxRelay(engine, KafkaProducer(settings, client_id="relay-gap-test"), batch=100)
    try:
        _drain(relay)
        with engine.connect() as late:
            late_rows = _envelopes(3, "late")
            with late.begin():
                add_to_outbox(late, late_rows)  # ids taken now, committed after the next ones are published
                with engine.begin() as conn:
                    add_to_outbox(conn, _envelopes(5, "early"))
                assert _drain(relay) == 5
            # committed: their ids are below every row published so far
            assert _drain(relay) == 3
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).where(
                outbox.c.published_at.is_(None),
                outbox.c.event_id.in_([e.event_id for _, _, e in late_rows]))).scalar_one() == 0
    finally:
        relay.stop()


def test_a_runs_messages_are_one_bundle_per_key_each_sent_with_its_own_type_in_order(settings, engine):
    """A billing run's unit of work writes each subscription's messages of the batch (a close's credits and
    invoice events) as one outbox row; the relay sends every message as itself. A message whose event id is
    already a row (a replay) is dropped on its own, without the new messages bundled with it, and one the batch
    holds twice is sent once."""
    at = datetime(2026, 2, 1, tzinfo=UTC)
    tag = uuid.uuid4().hex[:8]
    keys = [f"sub_{tag}_{i}" for i in range(COPY_THRESHOLD // 2)]
    written: dict[str, list[Envelope]] = {key: [] for key in keys}
    messages = []
    for type_ in ("credits.granted", "credits.expired", "invoice.finalized"):
        for key in keys:
            env = new_envelope(type_, {"subscription_id": key}, producer="test", occurred_at=at)
            messages.append((topics.BILLING_EVENTS, key, env))
            written[key].append(env)
    replayed = messages[len(keys)]  # the first key's credits.expired, already published before this batch
    with engine.begin() as conn:
        add_to_outbox(conn, [replayed])
        conn.execute(sa.update(outbox).values(published_at=sa.func.now()))
    written[keys[0]].remove(replayed[2])
    twice = messages[-1]  # the last key's invoice.finalized, emitted twice by the batch: sent once
    with engine.begin() as conn:
        add_unit_of_work_outbox(conn, [*messages, twice])
        rows = conn.execute(sa.select(outbox.c.message_key, outbox.c.event_type, outbox.c.bundled)
                            .where(outbox.c.published_at.is_(None))).all()
    assert sorted(rows) == sorted((key, MIXED_BUNDLE, True) for key in keys)

    relay = OutboxRelay(engine, KafkaProducer(settings, client_id="relay-run-test"))
    while relay.publish_round() > 0:
        pass
    relay.stop()
    assert relay.published == 3 * len(keys) - 1

    consumer = Consumer(settings.kafka_consumer_config(f"relay-{uuid.uuid4().hex}"))
    consumer.subscribe([settings.topic(topics.BILLING_EVENTS)])
    received: dict[str, list[tuple[bytes, Envelope]]] = {key: [] for key in keys}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum(map(len, received.values())) < relay.published:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None and msg.key().decode() in received:
                env = Envelope.from_bytes(msg.value())
                received[msg.key().decode()].append((dict(msg.headers())["type"], env))
    finally:
        consumer.close()
    assert {key: [env for _, env in got] for key, got in received.items()} == written
    assert all(header == env.type.encode() for got in received.values() for header, env in got)

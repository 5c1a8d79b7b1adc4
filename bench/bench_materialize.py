"""materialize_events_per_s: usage consumed, deduplicated and committed exactly once by the real worker
(`python -m services.billing_worker` as a subprocess), against `naive_materialize_events_per_s`: the same
decoder with one PostgreSQL transaction per event (event insert, aggregate upsert, offset), same run.
worker_peak_rss_mb is the worker process's peak resident set (VmHWM) over the run.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from confluent_kafka import Consumer, TopicPartition
from sqlalchemy.dialects.postgresql import insert

from services.billing_worker.adapters.usage import MeterMap, decode_usage
from shared.adapters.catalog_file import load_default_catalog
from shared.adapters.kafka.producer import KafkaProducer, OutgoingMessage
from shared.adapters.postgres.schema.core import consumer_offsets
from shared.adapters.postgres.schema.usage import usage_aggregates, usage_events
from shared.contracts import topics

REPO = Path(__file__).resolve().parent.parent
EVENTS = int(os.environ.get("BENCH_MATERIALIZE_EVENTS", "200000"))
NAIVE_EVENTS = int(os.environ.get("BENCH_MATERIALIZE_NAIVE_EVENTS", "4000"))
SUBSCRIPTIONS = 2000
_LOG = REPO / "var" / "bench" / "materialize_worker.log"
DUPLICATE_RATE = 0.05
METRICS = ("materialize_events_per_s", "naive_materialize_events_per_s", "worker_peak_rss_mb")


def _produce(settings: Any, events: int, seed: int) -> int:
    """Produce `events` inference events (+5% re-sent duplicates); returns the number of messages."""
    rng = random.Random(seed)
    producer = KafkaProducer(settings, client_id="bench-materialize", **{"linger.ms": 50})
    start = datetime(2026, 1, 1, tzinfo=UTC)
    sent: list[OutgoingMessage] = []
    batch: list[OutgoingMessage] = []
    total = 0
    for n in range(events):
        i = rng.randrange(SUBSCRIPTIONS)
        ts = (start + timedelta(seconds=rng.randrange(30 * 86400))).isoformat()
        value = orjson.dumps({
            "event_id": str(uuid.uuid4()), "type": "usage.recorded", "schema_version": 1, "occurred_at": ts,
            "producer": "bench", "correlation_id": None,
            "payload": {"transaction_id": f"tx-{seed}-{n}", "customer_id": f"cus_{i}", "subscription_id": f"sub_{i}",
                        "event_type": "inference", "timestamp": ts, "received_at": ts,
                        "properties": {"cost_usd_micros": rng.randint(1, 10_000)}}})
        msg = OutgoingMessage(topics.USAGE, f"sub_{i}", value)
        batch.append(msg)
        if rng.random() < DUPLICATE_RATE and sent:
            batch.append(sent[rng.randrange(len(sent))])
        if len(sent) < 10_000:
            sent.append(msg)
        if len(batch) >= 20_000:
            producer.send_and_wait(batch, timeout=120)
            total += len(batch)
            batch = []
    if batch:
        producer.send_and_wait(batch, timeout=120)
        total += len(batch)
    producer.close()
    return total


def _committed(engine: sa.Engine, group: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.coalesce(sa.func.sum(consumer_offsets.c.next_offset), 0))
                                .where(consumer_offsets.c.group_id == group)).scalar_one())


def _env(settings: Any) -> dict[str, str]:
    return {**os.environ, **settings.to_env()}


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _run_worker(ctx: Any, messages: int) -> tuple[float, float]:
    """Start the worker on a produced backlog; events/s from its first commit to the last, and peak RSS."""
    settings = ctx.settings
    _LOG.parent.mkdir(parents=True, exist_ok=True)  # a fresh clone has no var/bench yet
    proc = subprocess.Popen([sys.executable, "-m", "services.billing_worker", "--no-relay"], cwd=REPO,
                            env=_env(settings), stdout=subprocess.DEVNULL, stderr=_LOG.open("ab"))
    try:
        deadline = time.monotonic() + 600
        first_at, first_done = None, 0
        while time.monotonic() < deadline:
            done = _committed(ctx.engine, settings.consumer_group)
            now = time.monotonic()
            if first_at is None and done > 0:
                first_at, first_done = now, done
            if done >= messages:
                assert first_at is not None
                rate = (done - first_done) / max(now - first_at, 1e-3)
                return rate, _peak_rss_mb(proc.pid)
            time.sleep(0.05)
        raise RuntimeError("the worker did not catch up within 600 s")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _run_naive(ctx: Any, messages: int) -> float:
    """One transaction per event: decode, insert event, upsert aggregate, store offset, commit."""
    settings, engine = ctx.settings, ctx.engine
    meters = MeterMap.from_catalog(load_default_catalog())
    consumer = Consumer(settings.kafka_consumer_config(f"naive-{uuid.uuid4().hex[:6]}"))
    name = settings.topic(topics.USAGE)
    partitions = consumer.list_topics(name, timeout=10).topics[name].partitions
    consumer.assign([TopicPartition(name, p, 0) for p in partitions])
    done, started = 0, None
    try:
        while done < messages:
            msg = consumer.poll(1.0)
            if msg is None or msg.error() is not None:
                continue
            started = started or time.perf_counter()
            item = decode_usage(msg.value(), meters)
            with engine.begin() as conn:
                inserted = conn.execute(insert(usage_events).values(
                    customer_id=item.customer_id, transaction_id=item.transaction_id,
                    subscription_id=item.subscription_id, event_type=item.event_type, meter_id=item.meter_id,
                    quantity=item.quantity, occurred_at=item.occurred_at, received_at=item.received_at)
                    .on_conflict_do_nothing().returning(usage_events.c.transaction_id)).first()
                if inserted is not None and item.meter_id is not None:
                    bucket = item.occurred_at.replace(minute=0, second=0, microsecond=0)
                    stmt = insert(usage_aggregates).values(subscription_id=item.subscription_id,
                                                           meter_id=item.meter_id, bucket_start=bucket,
                                                           quantity=item.quantity, event_count=1)
                    conn.execute(stmt.on_conflict_do_update(
                        index_elements=["subscription_id", "meter_id", "bucket_start"],
                        set_={"quantity": usage_aggregates.c.quantity + stmt.excluded.quantity,
                              "event_count": usage_aggregates.c.event_count + 1}))
                offsets = insert(consumer_offsets).values(group_id="naive", topic=topics.USAGE,
                                                          partition=msg.partition(), next_offset=msg.offset() + 1)
                conn.execute(offsets.on_conflict_do_update(
                    index_elements=["group_id", "topic", "partition"],
                    set_={"next_offset": offsets.excluded.next_offset}))
            done += 1
    finally:
        consumer.close()
    return done / (time.perf_counter() - (started or time.perf_counter()))


def run(ctx: Any) -> dict[str, dict[str, Any]]:
    naive_ctx = ctx.fresh("materialize_naive") if hasattr(ctx, "fresh") else ctx
    naive_messages = _produce(naive_ctx.settings, NAIVE_EVENTS, seed=2)
    naive_rate = _run_naive(naive_ctx, naive_messages)

    messages = _produce(ctx.settings, EVENTS, seed=1)
    rate, rss = _run_worker(ctx, messages)
    return {
        "materialize_events_per_s": {"value": round(rate), "unit": "events/s",
                                     "baseline": "naive_materialize_events_per_s"},
        "naive_materialize_events_per_s": {"value": round(naive_rate), "unit": "events/s", "baseline": None},
        "worker_peak_rss_mb": {"value": round(rss, 1), "unit": "MB", "baseline": None},
    }

"""materialize_events_per_s: usage consumed, deduplicated and committed exactly once by the real worker
(`python -m services.billing_worker` as a subprocess), against `naive_materialize_events_per_s`: the same
decoder with one PostgreSQL transaction per event (event insert, aggregate upsert, offset), same run.
worker_peak_rss_mb is the worker process's peak resident set (VmHWM) over the run.
`materialize_worker_cpu_us_per_event`: CPU (user + system, every thread) the worker process used per event
over the same window as the rate; `materialize_pg_cpu_us_per_event`: the CPU of the PostgreSQL backends
serving the worker's connections over that window, per event. On a shared machine CPU per event is the
steadier figure: the rate moves with whatever else runs, the CPU an event costs much less.
`materialize_events_per_cpu_s` = 1e6 / (worker + PostgreSQL CPU us per event): what one core's second of CPU
materialises (derived, not a measured rate; Kafka's broker, ~0.05 core here, left out). On an idle 2-core
machine the rate can approach twice it; on a shared one the rate is what the other load leaves.
BILLING_BENCH_PROFILE=1 runs the worker under py-spy (`-f raw`): var/bench/materialize_worker.pyspy.txt.
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

from bench.process_cpu import child_pids, cpu_seconds
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
_PROFILE = REPO / "var" / "bench" / "materialize_worker.pyspy.txt"
METRICS = ("materialize_events_per_s", "naive_materialize_events_per_s", "worker_peak_rss_mb",
           "materialize_worker_cpu_us_per_event", "materialize_pg_cpu_us_per_event", "materialize_events_per_cpu_s")


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


def _pg_backends(engine: sa.Engine, pid: int) -> list[int]:
    """The PostgreSQL backends serving `pid`'s TCP connections to the database (matched on the client port
    pg_stat_activity shows); empty when that cannot be seen (a Unix socket, another host)."""
    try:
        inodes = {os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1] for fd in os.listdir(f"/proc/{pid}/fd")
                  if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:[")}
    except OSError:
        return []
    db_port = engine.url.port or 5432
    ports: list[int] = []
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[9] in inodes and int(cols[2].rsplit(":", 1)[1], 16) == db_port:
                ports.append(int(cols[1].rsplit(":", 1)[1], 16))
    if not ports:
        return []
    with engine.connect() as conn:
        return [int(p) for p in conn.execute(sa.text(
            "SELECT pid FROM pg_stat_activity WHERE client_port = ANY(:ports)"), {"ports": ports}).scalars()]


def _run_worker(ctx: Any, messages: int) -> tuple[float, float, float, float | None]:
    """Start the worker on a produced backlog; events/s from its first commit to the last, peak RSS, and the
    CPU per event of the worker and of its PostgreSQL backends over the same window."""
    settings = ctx.settings
    _LOG.parent.mkdir(parents=True, exist_ok=True)  # a fresh clone has no var/bench yet
    command = [sys.executable, "-m", "services.billing_worker", "--no-relay"]
    profile = bool(os.environ.get("BILLING_BENCH_PROFILE"))
    if profile:  # py-spy (a dev dependency) samples the worker; it writes its file once the worker exits
        command = [str(Path(sys.executable).with_name("py-spy")), "record", "-r", "100", "-f", "raw", "-o",
                   str(_PROFILE), "--", *command]
    proc = subprocess.Popen(command, cwd=REPO, env=_env(settings), stdout=subprocess.DEVNULL,
                            stderr=_LOG.open("ab"))
    worker = proc.pid
    try:
        deadline = time.monotonic() + 600
        first_at, first_done = None, 0
        cpu0, pg0 = 0.0, {}
        while time.monotonic() < deadline:
            done = _committed(ctx.engine, settings.consumer_group)
            now = time.monotonic()
            if first_at is None and done > 0:
                first_at, first_done = now, done
                worker = next(iter(child_pids(proc.pid)), proc.pid) if profile else proc.pid
                cpu0 = cpu_seconds(worker)
                pg0 = {b: cpu_seconds(b) for b in _pg_backends(ctx.engine, worker)}
            if done >= messages:
                assert first_at is not None
                events = max(done - first_done, 1)
                worker_cpu = cpu_seconds(worker) - cpu0
                # PostgreSQL elsewhere (another host, a container, a Unix socket): its CPU is not seen here
                backends = [b for b in _pg_backends(ctx.engine, worker) if Path(f"/proc/{b}/stat").exists()]
                pg_cpu = sum(cpu_seconds(b) - pg0.get(b, 0.0) for b in backends) if backends else None
                return (events / max(now - first_at, 1e-3), _peak_rss_mb(worker), worker_cpu * 1e6 / events,
                        None if pg_cpu is None else pg_cpu * 1e6 / events)
            time.sleep(0.05)
        raise RuntimeError("the worker did not catch up within 600 s")
    finally:
        os.kill(worker, signal.SIGTERM)
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
    rate, rss, worker_us, pg_us = _run_worker(ctx, messages)
    metrics = {
        "materialize_events_per_s": {"value": round(rate), "unit": "events/s",
                                     "baseline": "naive_materialize_events_per_s"},
        "naive_materialize_events_per_s": {"value": round(naive_rate), "unit": "events/s", "baseline": None},
        "worker_peak_rss_mb": {"value": round(rss, 1), "unit": "MB", "baseline": None},
        "materialize_worker_cpu_us_per_event": {"value": round(worker_us, 1), "unit": "us/event", "baseline": None},
    }
    if pg_us is not None:
        metrics["materialize_pg_cpu_us_per_event"] = {"value": round(pg_us, 1), "unit": "us/event", "baseline": None}
        metrics["materialize_events_per_cpu_s"] = {"value": round(1e6 / max(worker_us + pg_us, 1e-3)),
                                                   "unit": "events/cpu-s", "baseline": None}
    return metrics

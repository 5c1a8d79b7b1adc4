"""Reusable harness for billing-worker integration tests: worker subprocesses, usage producers, waits.

`WorkerProcess(settings)` runs `python -m services.billing_worker` with the settings rendered as BILLING_*
environment variables; `kill()` is kill -9, `stop()` is SIGTERM. `UsageLedger` produces usage (with
deliberate duplicates) and remembers what a correct worker must have materialised.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa
from confluent_kafka import Consumer, TopicPartition

from shared.adapters.kafka.producer import KafkaProducer, OutgoingMessage
from shared.adapters.postgres.schema.core import consumer_offsets
from shared.config import Settings
from shared.contracts import topics
from shared.contracts.envelope import new_envelope

REPO = Path(__file__).resolve().parents[3]


def settings_env(settings: Settings) -> dict[str, str]:
    """The BILLING_* environment that rebuilds `settings` in a child process."""
    return settings.to_env()


class WorkerProcess:
    def __init__(self, settings: Settings, *, member_id: str | None = None, session_timeout_ms: int = 6000,
                 relay: bool = True, log_path: Path | None = None) -> None:
        self.settings = settings
        self.member_id = member_id
        self.session_timeout_ms = session_timeout_ms
        self.relay = relay
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._log_offset = 0

    def start(self) -> WorkerProcess:
        args = [sys.executable, "-m", "services.billing_worker", "--session-timeout-ms",
                str(self.session_timeout_ms)]
        if self.member_id:
            args += ["--member-id", self.member_id]
        if not self.relay:
            args.append("--no-relay")
        env = {**os.environ, **settings_env(self.settings), "PYTHONUNBUFFERED": "1"}
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self._log_offset = self.log_path.stat().st_size if self.log_path and self.log_path.exists() else 0
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=out)
        self.starts += 1
        return self

    def wait_running(self, timeout: float = 60.0) -> None:
        """Until this start's process logged that it runs, so its SIGTERM handler is installed.

        A SIGTERM in the interpreter's first milliseconds (before `main` installs the handler) ends the
        process with the default action (-15) however correct the worker is; a test that expects a
        graceful exit must not race its own start."""
        if self.proc is None or self.log_path is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                if b"billing worker starting" in log.read():
                    return
            time.sleep(0.05)
        if self.proc.poll() is None:
            raise AssertionError(f"the worker did not log its start within {timeout} s")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9: no cleanup at all, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM once the process runs (`wait_running`), then wait for a graceful exit (falls back to
        kill -9 after `timeout`)."""
        if self.proc is None:
            return None
        self.wait_running()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


@contextmanager
def worker_thread(settings: Settings) -> Iterator[None]:
    """The real billing worker, in a thread of this process, for the length of the block."""
    from services.billing_worker.bootstrap import build_worker

    worker = build_worker(settings, session_timeout_ms=6000)
    stop = threading.Event()
    died: list[BaseException] = []

    def run() -> None:
        try:
            worker.run(stop)
        except BaseException as error:  # in a process this would exit it; here the test must hear of it
            died.append(error)
            raise

    thread = threading.Thread(target=run, daemon=True, name="billing-worker")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(60)
        if died:
            raise RuntimeError(f"the worker thread died: {died[0]!r}") from died[0]


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.25, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


def end_offsets(settings: Settings, logical_topics: tuple[str, ...]) -> dict[tuple[str, int], int]:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"probe-{uuid.uuid4().hex}"})
    try:
        out = {}
        for logical in logical_topics:
            name = settings.topic(logical)
            meta = consumer.list_topics(name, timeout=10).topics[name]
            for p in meta.partitions:
                _, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)
                out[(logical, p)] = high
        return out
    finally:
        consumer.close()


def committed_offsets(engine: sa.Engine, group: str) -> dict[tuple[str, int], int]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(consumer_offsets.c.topic, consumer_offsets.c.partition,
                                      consumer_offsets.c.next_offset)
                            .where(consumer_offsets.c.group_id == group)).all()
    return {(t, p): o for t, p, o in rows if o is not None}


def caught_up(settings: Settings, engine: sa.Engine, logical_topics: tuple[str, ...],
              group: str | None = None) -> bool:
    ends = end_offsets(settings, logical_topics)
    done = committed_offsets(engine, group or settings.consumer_group)
    return all(done.get(key, 0) >= high for key, high in ends.items() if high > 0)


def usage_envelope(*, customer_id: str, subscription_id: str, transaction_id: str, event_type: str,
                   properties: dict[str, object], timestamp: datetime) -> bytes:
    return new_envelope("usage.recorded", {
        "transaction_id": transaction_id, "customer_id": customer_id, "subscription_id": subscription_id,
        "event_type": event_type, "timestamp": timestamp.isoformat(), "properties": properties,
        "received_at": timestamp.isoformat()}, producer="test-harness", occurred_at=timestamp).to_bytes()


@dataclass
class UsageLedger:
    """Produces inference usage for `subscriptions` subscriptions and keeps the expected totals."""

    settings: Settings
    subscriptions: int
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    duplicate_rate: float = 0.05
    seed: int = 7
    expected_quantity: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    expected_events: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    produced: int = 0
    duplicates: int = 0
    _sent: list[tuple[str, bytes]] = field(default_factory=list)
    _next: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._producer = KafkaProducer(self.settings, client_id="usage-ledger", **{"linger.ms": 20})

    def sub(self, i: int) -> str:
        return f"sub_{i:05d}"

    def produce(self, events: int) -> None:
        """Produce `events` new events spread over the subscriptions, plus re-sent duplicates."""
        batch: list[OutgoingMessage] = []
        for _ in range(events):
            i = self._rng.randrange(self.subscriptions)
            sub = self.sub(i)
            cost = self._rng.randint(1, 5000)
            self._next += 1
            ts = self.start + timedelta(seconds=self._rng.randrange(0, 20 * 86400))
            raw = usage_envelope(customer_id=f"cus_{i:05d}", subscription_id=sub,
                                 transaction_id=f"tx-{self._next}", event_type="inference",
                                 properties={"cost_usd_micros": cost}, timestamp=ts)
            self.expected_quantity[sub] += cost
            self.expected_events[sub] += 1
            batch.append(OutgoingMessage(topics.USAGE, sub, raw))
            self._sent.append((sub, raw))
            if self._rng.random() < self.duplicate_rate:
                dup_sub, dup_raw = self._sent[self._rng.randrange(len(self._sent))]
                batch.append(OutgoingMessage(topics.USAGE, dup_sub, dup_raw))
                self.duplicates += 1
        self._producer.send_and_wait(batch, timeout=60)
        self.produced += events

    def close(self) -> None:
        self._producer.close()


def materialised(engine: sa.Engine) -> tuple[dict[str, Decimal], dict[str, int], int]:
    """(quantity per subscription from aggregates, events per subscription from aggregates, event rows)."""
    with engine.connect() as conn:
        agg = conn.execute(sa.text("SELECT subscription_id, sum(quantity), sum(event_count) FROM usage_aggregates "
                                   "GROUP BY subscription_id")).all()
        rows = conn.execute(sa.text("SELECT count(*) FROM usage_events")).scalar_one()
    return {s: q for s, q, _ in agg}, {s: int(n) for s, _, n in agg}, int(rows)


def drain(worker, engine: sa.Engine, timeout: float = 120.0,  # type: ignore[no-untyped-def]
          logical_topics: tuple[str, ...] = (topics.USAGE, topics.COMMANDS, topics.PAYMENTS)) -> None:
    """Drive an in-process worker's consumer until every produced message is committed in PostgreSQL."""
    worker.consumer.subscribe()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        worker.consumer.poll_once()
        if worker.consumer.owned() and caught_up(worker.settings, engine, logical_topics,
                                                 worker.consumer._group):
            return
    raise AssertionError("worker did not catch up")

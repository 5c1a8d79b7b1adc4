"""Start the three services as separate operator-style processes (`billing ingest|worker|dunning`) and wait
until the pipeline is quiet (every consumed topic caught up, outbox drained, no charge in flight, every
payment the provider took on its invoice)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import sqlalchemy as sa
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from shared.config import Settings
from shared.contracts import topics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServiceProcess:
    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", *self.args], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env={**os.environ, **self.env}, start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def wait_http_ready(base_url: str, service: ServiceProcess, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not service.alive():
            raise RuntimeError(f"{service.name} exited during start-up; see {service.log_path}")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{service.name} not ready after {timeout:.0f}s; see {service.log_path}")


class Quiescence:
    """Knows when everything sent so far has been processed: the worker's stored offsets (PostgreSQL)
    reached the high watermarks of its topics, the dunning group committed the end of billing-events,
    the outbox is drained, no payment is pending, and every payment the (simulated) provider took is on
    its invoice. The last one is what waits for the dunning service's reconciliation timer to find a
    payment made at the provider whose webhook was lost."""

    WORKER_TOPICS = (topics.COMMANDS, topics.USAGE, topics.PAYMENTS)

    def __init__(self, settings: Settings, engine: sa.Engine, dunning_group: str) -> None:
        self._settings = settings
        self._engine = engine
        self._dunning_group = dunning_group
        self._watermarks = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                                     "group.id": f"{settings.consumer_group}-observer",
                                     "enable.auto.commit": False})
        self._admin = AdminClient(settings.kafka_admin_config())
        md = self._admin.list_topics(timeout=10)
        self._partitions = {t: sorted(md.topics[settings.topic(t)].partitions)
                            for t in (*self.WORKER_TOPICS, topics.BILLING_EVENTS)}

    def _high(self, topic: str) -> dict[int, int]:
        name = self._settings.topic(topic)
        return {p: self._watermarks.get_watermark_offsets(TopicPartition(name, p), timeout=10)[1]
                for p in self._partitions[topic]}

    def pending(self) -> dict[str, int]:
        """How much work is still outstanding, per kind (all zero = quiet)."""
        out: dict[str, int] = {}
        with self._engine.connect() as conn:
            stored = {(t, p): o for t, p, o in conn.execute(sa.text(
                "SELECT topic, partition, coalesce(next_offset, 0) FROM consumer_offsets WHERE group_id = :g"),
                {"g": self._settings.consumer_group})}
            out["outbox"] = int(conn.execute(sa.text(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL")).scalar_one())
            out["payments_in_flight"] = int(conn.execute(sa.text(
                "SELECT count(*) FROM payment_attempts WHERE status IN ('pending', 'in_flight', 'unknown')"))
                .scalar_one())
            out["provider_payments_not_on_invoice"] = int(conn.execute(sa.text(
                "SELECT count(*) FROM simulated_gateway_charges c WHERE c.succeeded AND NOT EXISTS ("
                "SELECT 1 FROM invoices i WHERE i.invoice_id = c.invoice_id AND i.status = 'paid')")).scalar_one())
        # The worker stores offsets under the logical topic name (the prefix is deployment detail).
        for topic in self.WORKER_TOPICS:
            out[topic] = sum(max(0, high - stored.get((topic, p), 0)) for p, high in self._high(topic).items())
        high = self._high(topics.BILLING_EVENTS)
        name = self._settings.topic(topics.BILLING_EVENTS)
        committed = self._admin.list_consumer_group_offsets(
            [_group_request(self._dunning_group, [TopicPartition(name, p) for p in high])])
        offsets = {tp.partition: tp.offset for tp in committed[self._dunning_group].result().topic_partitions}
        out["dunning"] = sum(max(0, h - max(offsets.get(p, 0), 0)) for p, h in high.items())
        return out

    def wait(self, timeout: float = 180.0, settle: float = 1.5) -> dict[str, int]:
        """Block until two checks `settle` seconds apart both find nothing pending."""
        deadline = time.monotonic() + timeout
        quiet_since: float | None = None
        last: dict[str, int] = {}
        while time.monotonic() < deadline:
            last = self.pending()
            if not any(last.values()):
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= settle:
                    return last
            else:
                quiet_since = None
            time.sleep(0.4)
        raise TimeoutError(f"pipeline not quiet after {timeout:.0f}s: {last}")

    def close(self) -> None:
        self._watermarks.close()
        # An AdminClient has no close(): dropping the last reference destroys its handle now, before the
        # demo stops the broker (otherwise it outlives the broker and logs the disconnection).
        del self._admin


def _group_request(group: str, partitions: list[TopicPartition]):  # type: ignore[no-untyped-def]
    from confluent_kafka import ConsumerGroupTopicPartitions

    return ConsumerGroupTopicPartitions(group, partitions)

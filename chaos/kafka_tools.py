"""Kafka plumbing of the fault suite: raw produce (no envelope, no validation), DLQ reads and counts."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from chaos.corpus import PoisonCase
from shared.config import Settings
from shared.contracts import topics

CONSUMED_TOPICS = (topics.USAGE, topics.COMMANDS, topics.PAYMENTS, topics.BILLING_EVENTS)


@dataclass(frozen=True)
class Produced:
    case: PoisonCase
    partition: int
    offset: int


def produce_raw(settings: Settings, cases: list[PoisonCase], timeout: float = 60.0) -> list[Produced]:
    """Write each case's key and bytes as they are, like kcat would; returns where each one landed."""
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True,
                         "acks": "all", "message.max.bytes": 2_000_000})
    landed: list[Produced] = []
    failures: list[str] = []

    def report(case: PoisonCase) -> Callable[[KafkaError | None, Message], None]:
        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                failures.append(f"{case.name}: {err}")
            else:
                landed.append(Produced(case, int(msg.partition() or 0), int(msg.offset() or 0)))
        return delivered

    for case in cases:
        producer.produce(settings.topic(case.topic), key=case.key, value=case.value, on_delivery=report(case))
        producer.poll(0)
    left = producer.flush(timeout)
    if left or failures:
        raise RuntimeError(f"poison corpus not fully produced: {left} unsent, failures {failures[:3]}")
    return landed


def _partitions(consumer: Consumer, name: str) -> list[int]:
    return sorted(consumer.list_topics(name, timeout=10).topics[name].partitions)


def message_count(settings: Settings, logical: str) -> int:
    """Messages currently in a topic (high minus low watermark, over its partitions)."""
    name = settings.topic(logical)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"chaos-{uuid.uuid4().hex}"})
    try:
        total = 0
        for p in _partitions(consumer, name):
            low, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)
            total += max(0, high - low)
        return total
    finally:
        consumer.close()


def dlq_counts(settings: Settings) -> dict[str, int]:
    """Dead letters per consumed topic."""
    return {t: message_count(settings, topics.dlq(t)) for t in CONSUMED_TOPICS}


@dataclass(frozen=True)
class DeadLetter:
    value: bytes | None
    headers: dict[str, bytes]

    @property
    def origin(self) -> tuple[int, int] | None:
        """(partition, offset) of the original message: the worker's headers, or dunning's `dlq.source`."""
        h = self.headers
        if "original_partition" in h and "original_offset" in h:
            return int(h["original_partition"]), int(h["original_offset"])
        if "dlq.source" in h:
            _, partition, offset = h["dlq.source"].decode().rsplit("/", 2)
            return int(partition), int(offset)
        return None

    @property
    def reason(self) -> str:
        raw = self.headers.get("error") or self.headers.get("dlq.error") or b""
        return raw.decode(errors="replace")


def read_dead_letters(settings: Settings, logical: str, timeout: float = 30.0) -> list[DeadLetter]:
    """Every message of `<logical>.dlq`, from the start to the high watermark seen when called."""
    name = settings.topic(topics.dlq(logical))
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"chaos-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        ends = {}
        for p in _partitions(consumer, name):
            low, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(name, p, 0) for p in ends])
        letters: list[DeadLetter] = []
        done: dict[int, int] = {}
        deadline = time.monotonic() + timeout
        while any(done.get(p, 0) < high for p, high in ends.items()) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            pairs: list[Any] = list(msg.headers() or [])
            headers = {str(k): _as_bytes(v) for k, v in pairs}
            letters.append(DeadLetter(msg.value(), headers))
            done[int(msg.partition() or 0)] = int(msg.offset() or 0) + 1
        return letters
    finally:
        consumer.close()


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value or "").encode()

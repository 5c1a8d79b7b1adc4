"""The fan-out consumer's contract with Kafka: offsets are committed only after the delivery rows committed;
a failed batch is sought back (consumed again) and not committed; an undecodable message is dead-lettered
before the offset moves past it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from services.webhooks.entrypoints.fan_out_consumer import FanOutConsumer
from shared.adapters.clock import ManualClock
from shared.adapters.kafka.dlq import DeadLetter
from shared.contracts.envelope import new_envelope

from .fakes import FakeDeliveryStore

pytestmark = pytest.mark.unit
AT = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
TOPIC = "p-billing-events.v1"


@dataclass
class Msg:
    partition_: int
    offset_: int
    key_: bytes | None
    value_: bytes | None

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def key(self) -> bytes | None:
        return self.key_

    def value(self) -> bytes | None:
        return self.value_


@dataclass
class FakeConsumer:
    batches: list[list[Msg]]
    commits: int = 0
    seeks: list[tuple[int, int]] = field(default_factory=list)

    def consume(self, num_messages: int, timeout: float) -> list[Msg]:
        return self.batches.pop(0) if self.batches else []

    committed: dict[int, int] = field(default_factory=dict)

    def commit(self, message: Any = None, offsets: Any = None, asynchronous: bool = True) -> None:
        # NOTE: like librdkafka with `enable.auto.offset.store=false` (the project's consumer config): a commit
        # naming no offsets commits the stored ones, and none are ever stored, so it fails with _NO_OFFSET.
        if offsets is None:
            raise RuntimeError("KafkaError{code=_NO_OFFSET,val=-168,str=\"Commit failed: Local: No offset stored\"}")
        self.commits += 1
        for tp in offsets:
            self.committed[tp.partition] = tp.offset

    def seek(self, partition: Any) -> None:
        self.seeks.append((partition.partition, partition.offset))


@dataclass
class Letters:
    sent: list[DeadLetter] = field(default_factory=list)

    def publish(self, letters: list[DeadLetter]) -> None:
        self.sent += letters


def event(sub: str) -> bytes:
    return new_envelope("invoice.paid", {"subscription_id": sub, "customer_id": "c"}, producer="worker",
                        occurred_at=AT).to_bytes()


def consumer_of(batches: list[list[Msg]], store: Any) -> tuple[FanOutConsumer, FakeConsumer, Letters]:
    kafka, letters = FakeConsumer(batches), Letters()
    return FanOutConsumer(kafka, TOPIC, store, ManualClock(AT), letters), kafka, letters


def test_rows_first_then_the_offsets_and_a_poison_message_goes_to_the_dlq() -> None:
    store = FakeDeliveryStore()
    store.add_endpoint("we_all", ["*"])
    batch = [Msg(0, 10, b"sub_1", event("sub_1")), Msg(0, 11, b"sub_1", b"not json"),
             Msg(1, 4, b"sub_2", event("sub_2"))]
    fan_out, kafka, letters = consumer_of([batch], store)
    assert fan_out.poll_once() == 2
    assert kafka.commits == 1 and kafka.seeks == []
    [letter] = letters.sent
    assert (letter.offset, letter.reason, letter.topic) == (11, "invalid_envelope", "billing-events.v1")
    assert [(r.new.ordering_key, r.new.event_type) for r in store.rows.values()] == [
        ("sub_1", "invoice.paid"), ("sub_2", "invoice.paid")]


class FailingStore(FakeDeliveryStore):
    @contextmanager
    def __call__(self) -> Iterator[FakeDeliveryStore]:
        raise ConnectionError("postgres down")
        yield self


def test_a_batch_whose_rows_fail_is_sought_back_and_not_committed() -> None:
    batch = [Msg(0, 10, b"sub_1", event("sub_1")), Msg(0, 11, b"sub_1", event("sub_1")),
             Msg(2, 7, b"sub_3", event("sub_3"))]
    fan_out, kafka, _ = consumer_of([batch], FailingStore())
    with pytest.raises(ConnectionError):
        fan_out.poll_once()
    assert kafka.commits == 0
    assert sorted(kafka.seeks) == [(0, 10), (2, 7)]


def test_the_offsets_committed_are_the_next_ones_after_the_batch_per_partition() -> None:
    # Before: `commit()` named no offsets, which fails when offsets are not auto-stored (the project's config):
    # every batch was "consumed again" forever after its rows were written, and later events never fanned out.
    batch = [Msg(0, 7, b"s", event("s")), Msg(1, 3, b"t", event("t")), Msg(0, 8, b"s", event("s"))]
    fan_out, kafka, _ = consumer_of([batch], FakeDeliveryStore())

    fan_out.poll_once()

    assert (kafka.commits, kafka.committed, kafka.seeks) == (1, {0: 9, 1: 4}, [])

"""A paused instance that lost its partitions cannot commit: its late commit is fenced and rolled back."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
import sqlalchemy as sa

from services.billing_worker.adapters.usage import MeterMap, UsageMaterializer
from services.billing_worker.bootstrap import make_clock, message_bus, sql_unit_of_work
from services.billing_worker.entrypoints.consumer import ExactlyOnceConsumer
from services.billing_worker.service_layer.messagebus import BatchProcessor
from shared.adapters.catalog_file import load_default_catalog
from shared.adapters.kafka.dlq import DeadLetterPublisher
from shared.adapters.kafka.producer import KafkaProducer
from shared.contracts import topics
from tests.integration.worker.harness import UsageLedger, caught_up, materialised, wait_until

pytestmark = pytest.mark.integration

CONSUMED = (topics.COMMANDS, topics.USAGE, topics.PAYMENTS)
QUICK_GROUP_EXIT = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000, "max.poll.interval.ms": 6000}


def make_consumer(settings, engine, name, apply_wrapper=None):
    catalog = load_default_catalog()
    processor = BatchProcessor(message_bus({}), sql_unit_of_work(catalog),
                               UsageMaterializer(MeterMap.from_catalog(catalog)), make_clock(settings, engine))
    apply = apply_wrapper(processor) if apply_wrapper else processor
    return ExactlyOnceConsumer(settings, engine, apply, DeadLetterPublisher(KafkaProducer(settings, client_id=name)),
                               topics=CONSUMED, instance_id=name, consumer_overrides=QUICK_GROUP_EXIT)


def test_a_paused_instance_that_lost_its_partitions_cannot_commit_its_batch(settings, engine):
    ledger = UsageLedger(settings, subscriptions=30, duplicate_rate=0.1)
    ledger.produce(2000)
    ledger.close()

    in_batch, release = threading.Event(), threading.Event()

    def pausing(processor):
        def apply(conn, records):
            dead = processor(conn, records)  # effects written, not committed
            if not release.is_set():
                in_batch.set()
                release.wait(60)  # "paused": no poll, no heartbeat to the application, past max.poll.interval
            return dead
        return apply

    paused = make_consumer(settings, engine, "paused", pausing)
    paused.subscribe()
    paused_result: dict[str, int] = {}

    def run_paused():
        while not in_batch.is_set():
            paused_result["committed"] = paused.poll_once()
        # the call that ran the paused batch returned after release: that is the late commit attempt
        paused_result["late_commit"] = paused_result.pop("committed", 0)

    paused_thread = threading.Thread(target=run_paused, daemon=True)
    paused_thread.start()
    wait_until(in_batch.is_set, 60, what="the first instance to be inside a batch")

    successor = make_consumer(settings, engine, "successor")
    successor.subscribe()
    stop = threading.Event()

    def run_successor():
        while not stop.is_set():
            successor.poll_once()

    successor_thread = threading.Thread(target=run_successor, daemon=True)
    successor_thread.start()
    # The successor owns the partitions once the group expelled the silent instance and it bumped the epochs.
    wait_until(lambda: len(successor.owned()) == 9, 60, what="the successor to own every partition")
    release.set()
    paused_thread.join(30)

    wait_until(lambda: caught_up(settings, engine, CONSUMED), 120, what="the successor to catch up")
    stop.set()
    successor_thread.join(30)
    paused.close()
    successor.close()

    assert paused.stats.fenced == 1
    assert paused.stats.batches == 0  # nothing it did was committed
    assert paused_result["late_commit"] == 0
    quantity, events, rows = materialised(engine)
    assert rows == ledger.produced
    assert quantity == {s: Decimal(q) for s, q in ledger.expected_quantity.items()}
    assert events == dict(ledger.expected_events)
    with engine.connect() as conn:
        owners = set(conn.execute(sa.text("SELECT owner FROM consumer_offsets")).scalars())
    assert owners == {"successor"}

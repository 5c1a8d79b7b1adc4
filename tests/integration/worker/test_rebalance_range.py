"""BILLING_WORKER_PARTITION_ASSIGNMENT=range: two instances split every topic evenly (a billing run's closes on
commands.v1 are shared), and one leaving mid-run hands its partitions over with no total changed (the eager
protocol's whole-assignment callbacks)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from decimal import Decimal

import pytest
import sqlalchemy as sa

from shared.contracts import topics
from tests.integration.worker.harness import UsageLedger, WorkerProcess, caught_up, materialised, wait_until

pytestmark = pytest.mark.integration

CONSUMED = (topics.COMMANDS, topics.USAGE, topics.PAYMENTS)


def owned(engine: sa.Engine) -> dict[str, Counter[str]]:
    """Per topic, how many partitions each instance owns."""
    out: dict[str, Counter[str]] = {}
    with engine.connect() as conn:
        for topic, owner in conn.execute(sa.text("SELECT topic, owner FROM consumer_offsets")):
            out.setdefault(topic, Counter())[owner] += 1
    return out


def test_with_range_two_instances_split_each_topic_evenly_and_one_leaving_changes_no_total(settings, engine,
                                                                                          tmp_path):
    settings = settings.model_copy(update={"worker_partition_assignment": "range"})
    ledger = UsageLedger(settings, subscriptions=300, duplicate_rate=0.05, seed=5)
    ledger.produce(3000)
    first = WorkerProcess(settings, log_path=tmp_path / "first.log", relay=False)
    second = WorkerProcess(settings, log_path=tmp_path / "second.log", relay=False)
    producing = threading.Event()
    producing.set()

    def keep_producing() -> None:
        while producing.is_set():
            ledger.produce(200)
            time.sleep(0.1)

    producer_thread = threading.Thread(target=keep_producing, daemon=True)
    try:
        first.start()
        second.start()

        def split() -> bool:
            shares = owned(engine)
            return all(len(shares.get(t, ())) == 2 for t in CONSUMED)

        wait_until(split, 90, what="both instances to own a share of every topic")
        shares = owned(engine)
        for topic in CONSUMED:
            counts = sorted(shares[topic].values())
            assert counts[1] - counts[0] <= 1, (topic, shares[topic])  # even, not balanced over all topics only
        producer_thread.start()
        time.sleep(2)
        assert first.stop() == 0  # leaves: the second instance is given everything
        time.sleep(2)
        producing.clear()
        producer_thread.join(30)
        wait_until(lambda: caught_up(settings, engine, CONSUMED), 180, interval=0.5, what="the catch-up")
        assert second.stop() == 0
    finally:
        producing.clear()
        ledger.close()
        for worker in (first, second):  # none left behind when an assertion above failed
            if worker.proc is not None and worker.proc.poll() is None:
                worker.kill()

    assert all(len(owners) == 1 for owners in owned(engine).values())
    quantity, events, rows = materialised(engine)
    assert rows == ledger.produced
    assert quantity == {s: Decimal(q) for s, q in ledger.expected_quantity.items()}
    assert events == dict(ledger.expected_events)

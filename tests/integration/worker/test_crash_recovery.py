"""kill -9 of the worker at random moments, 20+ times, while usage for 2,000 subscriptions flows in:
afterwards every event is counted exactly once."""

from __future__ import annotations

import random
import threading
import time
from decimal import Decimal

import pytest

from shared.contracts import topics
from tests.integration.worker.harness import (
    UsageLedger,
    WorkerProcess,
    caught_up,
    committed_offsets,
    materialised,
    wait_until,
)

pytestmark = pytest.mark.integration

CONSUMED = (topics.COMMANDS, topics.USAGE, topics.PAYMENTS)
SUBSCRIPTIONS = 2000
KILLS = 20


def test_usage_totals_survive_twenty_kill_nines_exactly_once(settings, engine, tmp_path):
    ledger = UsageLedger(settings, subscriptions=SUBSCRIPTIONS, duplicate_rate=0.05, seed=11)
    ledger.produce(SUBSCRIPTIONS * 5)  # a backlog so that the first start has work at once
    producing = threading.Event()
    producing.set()

    def keep_producing():
        while producing.is_set():
            ledger.produce(500)
            time.sleep(0.2)

    producer_thread = threading.Thread(target=keep_producing, daemon=True)
    producer_thread.start()

    rng = random.Random(5)
    worker = WorkerProcess(settings, member_id="crash-test", log_path=tmp_path / "worker.log", relay=False)
    progressed = 0
    try:
        for _ in range(KILLS):
            before = sum(committed_offsets(engine, settings.consumer_group).values())
            worker.start()
            # Kill once it is demonstrably working (offsets moving), at a random moment after that.
            try:
                wait_until(lambda b=before: sum(committed_offsets(engine, settings.consumer_group).values()) > b,
                           60, interval=0.05, what="the worker to commit a batch")
                progressed += 1
            finally:
                time.sleep(rng.uniform(0.0, 0.7))
                worker.kill()
    finally:
        producing.clear()
        producer_thread.join(30)
        ledger.close()

    worker.start()
    try:
        wait_until(lambda: caught_up(settings, engine, CONSUMED), 300, interval=0.5, what="the final catch-up")
    finally:
        assert worker.stop() == 0  # SIGTERM: graceful exit

    assert worker.starts == KILLS + 1 and progressed == KILLS
    assert ledger.produced >= SUBSCRIPTIONS * 5
    quantity, events, rows = materialised(engine)
    assert rows == ledger.produced
    assert len(quantity) == SUBSCRIPTIONS
    assert quantity == {s: Decimal(q) for s, q in ledger.expected_quantity.items()}
    assert events == dict(ledger.expected_events)

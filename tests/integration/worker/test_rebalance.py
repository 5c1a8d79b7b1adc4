"""Two instances, one joining and one leaving mid-run, give the same result as one instance."""

from __future__ import annotations

import threading
import time
from decimal import Decimal

import pytest
import sqlalchemy as sa

from shared.contracts import topics
from tests.integration.worker.harness import UsageLedger, WorkerProcess, caught_up, materialised, wait_until

pytestmark = pytest.mark.integration

CONSUMED = (topics.COMMANDS, topics.USAGE, topics.PAYMENTS)


def owners(engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text("SELECT DISTINCT owner FROM consumer_offsets")).scalars())


def test_an_instance_joining_and_another_leaving_mid_run_changes_no_total(settings, engine, tmp_path):
    ledger = UsageLedger(settings, subscriptions=500, duplicate_rate=0.05, seed=3)
    ledger.produce(5000)
    producing = threading.Event()
    producing.set()

    def keep_producing():
        while producing.is_set():
            ledger.produce(300)
            time.sleep(0.1)

    producer_thread = threading.Thread(target=keep_producing, daemon=True)
    producer_thread.start()
    first = WorkerProcess(settings, member_id=None, log_path=tmp_path / "first.log", relay=False).start()
    second = WorkerProcess(settings, member_id=None, log_path=tmp_path / "second.log", relay=False)
    try:
        wait_until(lambda: len(owners(engine)) == 1, 60, what="the first instance to own partitions")
        second.start()  # joins: cooperative rebalance moves some partitions to it
        wait_until(lambda: len(owners(engine)) == 2, 60, what="both instances to own partitions")
        time.sleep(2)
        assert first.stop() == 0  # leaves: its partitions move to the second instance
        time.sleep(2)  # the second instance alone, still under load
    finally:
        producing.clear()
        producer_thread.join(30)
        ledger.close()
    try:
        wait_until(lambda: caught_up(settings, engine, CONSUMED), 180, interval=0.5, what="the catch-up")
    finally:
        assert second.stop() == 0

    with engine.connect() as conn:
        final_owners = set(conn.execute(sa.text("SELECT owner FROM consumer_offsets")).scalars())
    assert len(final_owners) == 1  # the second instance took every partition over
    quantity, events, rows = materialised(engine)
    assert rows == ledger.produced
    assert quantity == {s: Decimal(q) for s, q in ledger.expected_quantity.items()}
    assert events == dict(ledger.expected_events)

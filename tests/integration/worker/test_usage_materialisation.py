"""Usage is materialised exactly once: duplicates counted, not stored twice; a replay changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa

from services.billing_worker.bootstrap import build_worker
from shared.adapters.postgres.usage_reads import usage_since
from tests.integration.worker.harness import UsageLedger, drain, materialised

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def first_run(settings, engine):
    ledger = UsageLedger(settings, subscriptions=50, duplicate_rate=0.3)
    ledger.produce(3000)
    ledger.close()
    worker = build_worker(settings, relay=False, handlers={}, background=False)
    try:
        drain(worker, engine)
    finally:
        worker.consumer.close()
    return ledger, worker


def test_usage_with_duplicates_is_materialised_exactly_once(first_run, engine):
    ledger, worker = first_run
    quantity, events, rows = materialised(engine)

    assert ledger.duplicates > 500
    assert rows == ledger.produced
    assert quantity == {s: Decimal(q) for s, q in ledger.expected_quantity.items()}
    assert events == dict(ledger.expected_events)
    assert worker.materializer.totals.duplicates == ledger.duplicates
    assert worker.consumer.stats.dead_letters == 0


def test_the_read_api_returns_usage_so_far_per_meter(first_run, engine):
    ledger, _ = first_run
    sub = ledger.sub(3)
    with engine.connect() as conn:
        seen = usage_since(conn, sub, datetime(2026, 1, 1, tzinfo=UTC))
    assert seen.totals == {"inference": Decimal(ledger.expected_quantity[sub])}
    assert seen.pending_late == {}


def test_replaying_the_topics_from_the_beginning_changes_nothing(first_run, settings, engine):
    ledger, _ = first_run
    before = materialised(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE consumer_offsets SET next_offset = NULL"))
    replay = build_worker(settings, relay=False, handlers={}, background=False)
    try:
        drain(replay, engine)
    finally:
        replay.consumer.close()

    assert materialised(engine) == before
    assert replay.materializer.totals.inserted == 0
    assert replay.materializer.totals.duplicates == ledger.produced + ledger.duplicates

"""The batch processor hands runs of one message type to the message bus in one call (one unit of work), keeps
each key's order, opens no savepoint per message, and still isolates a poison message inside a run."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from services.billing_worker.adapters.usage import MeterMap, UsageMaterializer
from services.billing_worker.bootstrap import message_bus, sql_unit_of_work
from services.billing_worker.entrypoints.consumer import Record
from services.billing_worker.service_layer.handlers import Handler
from services.billing_worker.service_layer.messagebus import BatchProcessor, MessageRejected
from shared.adapters.catalog_file import load_default_catalog
from shared.adapters.clock import ManualClock
from shared.adapters.postgres.schema.core import command_outcomes
from shared.contracts import topics
from shared.contracts.envelope import Envelope, new_envelope
from shared.contracts.messages import CancelSubscription, ClosePeriod

pytestmark = pytest.mark.integration

NOW = datetime(2026, 2, 1, tzinfo=UTC)


class Recorder:
    """Handlers that write one row per applied message and remember each run the bus handed them (a run's
    prefetch is called once, with all of its messages)."""

    def __init__(self, poison: str | None = None) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.poison = poison

    def handlers(self) -> dict[str, Handler]:
        return {"period.close": Handler(self.close, prefetch=self.run_of("period.close")),
                "subscription.cancel": Handler(self.cancel, prefetch=self.run_of("subscription.cancel"))}

    def run_of(self, kind: str) -> Any:
        def record_run(uow: Any, items: Sequence[tuple[Envelope, Any]], now: datetime) -> None:
            self.calls.append((kind, [p.subscription_id for _, p in items]))
        return record_run

    def close(self, uow: Any, envelope: Envelope, payload: Any, now: datetime) -> None:
        uow.conn.execute(sa.text("INSERT INTO applied (what) VALUES (:w)"), {"w": f"close {payload.subscription_id}"})
        if payload.subscription_id == self.poison:
            raise MessageRejected(f"{self.poison} cannot be closed", code="test_poison")

    def cancel(self, uow: Any, envelope: Envelope, payload: Any, now: datetime) -> None:
        uow.conn.execute(sa.text("INSERT INTO applied (what) VALUES (:w)"), {"w": f"cancel {payload.subscription_id}"})


def record(offset: int, type_: str, sub: str) -> Record:
    payload: Any = (ClosePeriod(subscription_id=sub, customer_id=f"cus_{sub}", period_end=NOW)
                    if type_ == "period.close" else CancelSubscription(subscription_id=sub, customer_id=f"cus_{sub}"))
    envelope = new_envelope(type_, payload.model_dump(mode="json"), producer="test", occurred_at=NOW)
    return Record(topics.COMMANDS, 0, offset, sub.encode(), envelope.to_bytes())


def apply(engine: sa.Engine, recorder: Recorder, records: list[Record]) -> tuple[list[Any], list[str], int]:
    """Apply one batch; returns its dead letters, the rows written, and the savepoints opened."""
    processor = BatchProcessor(message_bus(recorder.handlers()), sql_unit_of_work(load_default_catalog()),
                               UsageMaterializer(MeterMap({})), ManualClock(NOW))
    savepoints: list[str] = []
    with engine.connect() as conn:
        sa.event.listen(conn, "savepoint", lambda _conn, name: savepoints.append(name))
        with conn.begin():
            conn.execute(sa.text("CREATE TEMP TABLE applied (seq serial, what text) ON COMMIT DROP"))
            dead = processor(conn, records)
            written = list(conn.execute(sa.text("SELECT what FROM applied ORDER BY seq")).scalars())
    return dead, written, len(savepoints)


def test_a_run_of_period_closes_reaches_the_batch_handler_in_one_call_and_each_subscription_keeps_its_order(
        engine: sa.Engine) -> None:
    recorder = Recorder()
    records = [record(0, "period.close", "a"), record(1, "period.close", "b"), record(2, "subscription.cancel", "a"),
               record(3, "period.close", "c"), record(4, "period.close", "a"), record(5, "period.close", "d")]

    dead, written, _ = apply(engine, recorder, records)

    assert dead == []
    # c joins the first run (nothing of c came before it); a's second close must follow a's cancel.
    assert recorder.calls == [("period.close", ["a", "b", "c"]), ("subscription.cancel", ["a"]),
                              ("period.close", ["a", "d"])]
    assert written == ["close a", "close b", "close c", "cancel a", "close a", "close d"]


def test_a_clean_batch_of_a_thousand_messages_opens_one_savepoint_per_run_of_one_type_not_one_per_message(
        engine: sa.Engine) -> None:
    recorder = Recorder()
    records = [record(i, "period.close" if i % 10 else "subscription.cancel", f"s{i}") for i in range(1000)]

    dead, written, savepoints = apply(engine, recorder, records)

    assert dead == [] and len(written) == 1000
    # One for the batch, one per run of one type (the bus's unit of work: rolled back alone when a command
    # is refused midway); the runs are one of 900 closes and one of 100 cancels.
    assert len(recorder.calls) == 2 and savepoints == 1 + 2
    assert [len(subs) for kind, subs in recorder.calls if kind == "period.close"] == [900]


def test_a_poison_message_inside_a_run_is_dead_lettered_alone_and_the_rest_of_the_batch_commits(
        engine: sa.Engine) -> None:
    recorder = Recorder(poison="s37")
    records = [record(i, "period.close" if i % 10 else "subscription.cancel", f"s{i}") for i in range(200)]

    dead, written, savepoints = apply(engine, recorder, records)

    assert [(d.offset, d.error_class) for d in dead] == [(37, "MessageRejected")]
    assert sorted(written) == sorted(f"{'close' if i % 10 else 'cancel'} s{i}" for i in range(200) if i != 37)
    # A search by halves, not a savepoint per message (200): about eight levels of halves, each half one
    # savepoint plus one per run of one type in it (the bus's unit of work; 41 measured).
    assert savepoints < 50
    with engine.connect() as conn:
        outcome = conn.execute(sa.select(command_outcomes.c.status, command_outcomes.c.error_code).where(
            command_outcomes.c.command_id == Envelope.from_bytes(records[37].value).event_id)).one()
    assert tuple(outcome) == ("rejected", "test_poison")

"""kill -9 of the worker, 20+ times, during a billing run of 2,000 subscriptions with usage: afterwards
exactly one invoice per subscription and period, no invoice missing, at most one successful charge per
invoice at the (simulated, durable) provider, gapless invoice numbers, and usage billed exactly once."""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from services.billing_worker.adapters.billing_repository import audit_invoice_totals
from shared.adapters.clock import DatabaseClock
from shared.adapters.kafka.producer import KafkaProducer, OutgoingMessage
from shared.adapters.postgres.schema.billing import (
    invoice_lines,
    invoices,
    payment_attempts,
    simulated_gateway_charges,
    subscriptions,
)
from shared.adapters.postgres.schema.usage import usage_aggregates, usage_events
from shared.config import Settings
from shared.contracts import topics
from shared.contracts.envelope import new_envelope
from shared.contracts.messages import CreateSubscription
from tests.integration.worker.harness import WorkerProcess, committed_offsets, usage_envelope, wait_until

pytestmark = pytest.mark.integration

SUBSCRIPTIONS = 2000
KILLS = 20
JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
FEB_1 = datetime(2026, 2, 1, tzinfo=UTC)
# Most cards pay; some answers are lost after the provider charged (reconciled by lookup); some decline.
METHODS = ["pm_card_visa"] * 8 + ["pm_sim_timeout_after_success", "pm_card_chargeDeclined"]


def count(engine: sa.Engine, query: sa.Select) -> int:  # type: ignore[type-arg]
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def test_a_billing_run_survives_twenty_kill_nines_with_one_invoice_per_period_and_one_charge_per_invoice(
        settings: Settings, engine: sa.Engine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Small batches, so that a worker killed every few seconds still commits some of its work in between.
    simulated = settings.model_copy(update={"clock": "simulated", "simulated_clock_start": JAN_1.isoformat(),
                                            "scheduler_interval_s": 0.2, "payment_gateway": "simulated",
                                            "worker_batch_max": 100})
    rng = random.Random(7)
    run = uuid.uuid4().hex[:6]
    subs = [(f"sub_{run}_{i:05d}", f"cus_{run}_{i:05d}", METHODS[i % len(METHODS)]) for i in range(SUBSCRIPTIONS)]
    usage_micros: dict[str, int] = {}
    producer = KafkaProducer(simulated, client_id="billing-crash-test")
    messages = []
    for sub, cus, method in subs:
        # Started on Jan 1 explicitly: a create applied after the clock moved must still open January.
        create = CreateSubscription(subscription_id=sub, customer_id=cus, plan_id="pro", currency="USD",
                                    payment_method_id=method, tax_rate_bps=500, start_at=JAN_1)
        messages.append(OutgoingMessage.of(topics.COMMANDS, sub, new_envelope(
            "subscription.create", create.model_dump(mode="json"), producer="test", occurred_at=JAN_1)))
        usage_micros[sub] = 0
        for k in range(rng.randint(1, 3)):
            # Received (and dated) at the clock's start: the worker refuses a received_at after its billing
            # clock (+5 min), and the whole backlog is produced before the clock moves.
            micros = rng.randint(100_000, 3_000_000)
            usage_micros[sub] += micros
            messages.append(OutgoingMessage(topics.USAGE, sub, usage_envelope(
                customer_id=cus, subscription_id=sub, transaction_id=f"{sub}-{k}", event_type="inference",
                properties={"cost_usd_micros": micros}, timestamp=JAN_1 + timedelta(minutes=k))))
    usage_messages = sum(1 for m in messages if m.topic == topics.USAGE)
    producer.send_and_wait(messages, timeout=120)
    producer.close()

    worker = WorkerProcess(simulated, member_id="billing-crash", log_path=tmp_path / "worker.log")
    clock_moved = False
    kills_during_run = 0
    for _ in range(KILLS):
        before = sum(committed_offsets(engine, simulated.consumer_group).values())
        worker.start()
        # Kill once it demonstrably works (offsets moving), at a random moment after that.
        wait_until(lambda b=before: sum(committed_offsets(engine, simulated.consumer_group).values()) > b, 120,
                   interval=0.05, what="the worker to commit a batch")
        time.sleep(rng.uniform(0.0, 1.5))
        with engine.connect() as conn:
            created = conn.execute(sa.select(sa.func.count()).select_from(subscriptions)).scalar_one()
        # The month ends once subscriptions exist: from then on creations, closes and charges interleave, and
        # the kills land in the billing run itself.
        if not clock_moved and created > 0:
            DatabaseClock(engine, JAN_1).advance(FEB_1 - JAN_1 + timedelta(seconds=1))
            clock_moved = True
        elif clock_moved:
            paid_closes = count(engine, sa.select(sa.func.count()).select_from(invoices)
                                .where(invoices.c.kind == "period_close", invoices.c.status == "paid"))
            kills_during_run += paid_closes < SUBSCRIPTIONS * 8 // 10
        worker.kill()
    if not clock_moved:
        DatabaseClock(engine, JAN_1).advance(FEB_1 - JAN_1 + timedelta(seconds=1))

    worker.start()
    try:
        unsettled = sa.select(sa.func.count()).select_from(payment_attempts).where(
            payment_attempts.c.status.in_(("pending", "in_flight", "unknown")))
        closes = sa.select(sa.func.count()).select_from(invoices).where(invoices.c.kind == "period_close")
        wait_until(lambda: count(engine, closes) == SUBSCRIPTIONS and count(engine, unsettled) == 0, 600,
                   interval=1.0, what="every period closed and every charge settled")
        expected_paid = sum(1 for _, _, m in subs if m != "pm_card_chargeDeclined") * 2
        paid = sa.select(sa.func.count()).select_from(invoices).where(invoices.c.status == "paid")
        wait_until(lambda: count(engine, paid) == expected_paid, 300, interval=1.0, what="payments applied")
        stored = sa.select(sa.func.count()).select_from(usage_events)
        wait_until(lambda: count(engine, stored) == usage_messages, 300, interval=1.0, what="usage stored")
    finally:
        assert worker.stop() == 0

    assert worker.starts == KILLS + 1
    assert kills_during_run >= KILLS // 2
    with engine.connect() as conn:
        per_period = conn.execute(sa.select(invoices.c.subscription_id, invoices.c.kind, sa.func.count())
                                  .group_by(invoices.c.subscription_id, invoices.c.kind)).all()
        charges = conn.execute(sa.select(simulated_gateway_charges.c.invoice_id, sa.func.count())
                               .where(simulated_gateway_charges.c.succeeded)
                               .group_by(simulated_gateway_charges.c.invoice_id)).all()
        numbers = sorted(conn.execute(sa.select(invoices.c.number_seq)).scalars().all())
        usage_lines = conn.execute(
            sa.select(invoices.c.subscription_id, sa.func.sum(invoice_lines.c.quantity))
            .select_from(invoices.join(invoice_lines, invoice_lines.c.invoice_id == invoices.c.invoice_id))
            .where(invoice_lines.c.kind == "usage", invoice_lines.c.meter_id == "inference")
            .group_by(invoices.c.subscription_id)).all()
        a = usage_aggregates
        pending_usage = dict(conn.execute(
            sa.select(a.c.subscription_id, sa.func.sum(a.c.quantity - a.c.billed_quantity))
            .where(a.c.meter_id == "inference").group_by(a.c.subscription_id)
            .having(sa.func.sum(a.c.quantity - a.c.billed_quantity) != 0)).all())
        billed_usage = dict(conn.execute(
            sa.select(a.c.subscription_id, sa.func.sum(a.c.billed_quantity))
            .where(a.c.meter_id == "inference").group_by(a.c.subscription_id)).all())
        totals_off = audit_invoice_totals(conn)
    assert sorted({(kind, n) for _, kind, n in per_period}) == [("period_close", 1), ("subscription_start", 1)]
    assert len(per_period) == 2 * SUBSCRIPTIONS
    assert max(n for _, n in charges) == 1
    assert len(charges) == sum(1 for _, _, m in subs if m != "pm_card_chargeDeclined") * 2
    assert numbers == list(range(1, 2 * SUBSCRIPTIONS + 1))
    # Usage billed exactly once: every produced unit is either on an invoice line or still unbilled. A close
    # that ran before the subscription's usage was consumed (the backlog is produced before the worker starts,
    # and the clock moves at once) leaves it for the next close as a late adjustment (the late-event
    # policy): pending, never dropped, never billed twice.
    invoiced = {s: Decimal(q) for s, q in usage_lines}
    assert {s: q for s, q in invoiced.items() if q} == {s: Decimal(q) for s, q in billed_usage.items() if q}
    accounted = {s: invoiced.get(s, Decimal(0)) + Decimal(pending_usage.get(s, 0)) for s in usage_micros}
    assert accounted == {s: Decimal(m) for s, m in usage_micros.items()}
    assert totals_off == []

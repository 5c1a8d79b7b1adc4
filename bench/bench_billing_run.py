"""Billing run benchmark: N subscriptions closed, rated, invoiced and stored by the real worker.

Setup (not timed): N subscriptions on the Pro plan with a coupon and a tax rate are created through the
billing handlers in batches (their first invoices are marked settled so the executor only charges the run's
invoices), and one inference usage event per subscription is materialised.

Timed (`billing_run_100k_seconds`): the simulated billing clock moves past the period end; the worker's
scheduler turns it into N `period.close` commands on commands.v1, the exactly-once consumer applies them
through the handlers (usage closed, credits drawn, coupon, tax, invoice numbered), until N period-close
invoices are stored. The executor charges them through the simulated gateway meanwhile;
`billing_run_paid_seconds` is the time until all of them are paid (payments.v1 round trip included).

Baseline (`naive_billing_run_invoices_per_s`): the seed's BillingEngine loop on its own schema, one
subscription at a time: query it, check whether an invoice exists, insert the invoice, charge it, update the
invoice, update the subscription, each statement its own transaction.

N defaults to 100,000 (BILLING_BENCH_BILLING_SUBSCRIPTIONS overrides it for a quick run; the 100k figure is
then scaled linearly and says so in its unit).
"""

from __future__ import annotations

import gc
import os
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from services.billing_worker.adapters.usage import MeterMap, UsageMaterializer
from services.billing_worker.bootstrap import billing_handlers, build_worker, message_bus, sql_unit_of_work
from shared.adapters.catalog_file import load_default_catalog
from shared.adapters.clock import DatabaseClock
from shared.adapters.payments.port import ChargeRequest
from shared.adapters.payments.simulated import InMemoryProviderRecord, SimulatedGateway
from shared.adapters.postgres.schema.billing import invoices, payment_attempts, subscriptions
from shared.contracts.envelope import new_envelope
from shared.contracts.messages import CreateSubscription
from shared.domain.ids import derived_id
from shared.domain.money import Money

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
FEB_1 = datetime(2026, 2, 1, tzinfo=UTC)
SEED_BATCH = 2_000
NAIVE_SUBSCRIPTIONS = 3_000


def _subscriptions(n: int) -> list[tuple[str, str]]:
    return [(f"sub_b{i:07d}", f"cus_b{i:07d}") for i in range(n)]


def seed(engine: sa.Engine, n: int) -> None:
    catalog = load_default_catalog()
    bus, unit_of_work = message_bus(billing_handlers()), sql_unit_of_work(catalog)
    usage = UsageMaterializer(MeterMap.from_catalog(catalog))
    subs = _subscriptions(n)
    for start in range(0, n, SEED_BATCH):
        chunk = subs[start:start + SEED_BATCH]
        payloads = [CreateSubscription(subscription_id=s, customer_id=c, plan_id="pro", currency="USD",
                                       payment_method_id="pm_card_visa", coupon_id="PARTNER10", tax_rate_bps=800)
                    for s, c in chunk]
        items = [(new_envelope("subscription.create", p.model_dump(mode="json"), producer="bench",
                               occurred_at=JAN_1), p) for p in payloads]
        events = [usage.decode(new_envelope("usage.recorded", {
            "transaction_id": f"tx-{s}", "customer_id": c, "subscription_id": s, "event_type": "inference",
            "timestamp": (JAN_1 + timedelta(days=9)).isoformat(), "properties": {"cost_usd_micros": 2_750_000},
            "received_at": (JAN_1 + timedelta(days=9)).isoformat()}, producer="bench",
            occurred_at=JAN_1).to_bytes()) for s, c in chunk]
        with engine.begin() as conn:
            bus.handle(unit_of_work(conn), items, JAN_1)
            usage.apply(conn, events)
    with engine.begin() as conn:
        # The first invoices are not what this benchmark measures: settle them so the executor charges
        # only the invoices of the billing run.
        conn.execute(sa.update(payment_attempts).values(status="cancelled", completed_at=JAN_1))
        conn.execute(sa.update(invoices).where(invoices.c.status == "open")
                     .values(status="paid", paid_at=JAN_1, amount_paid_minor=invoices.c.amount_due_minor))


def _count(engine: sa.Engine, **where: str) -> int:
    with engine.connect() as conn:
        query = sa.select(sa.func.count()).select_from(invoices).where(invoices.c.kind == "period_close")
        for column, value in where.items():
            query = query.where(invoices.c[column] == value)
        return int(conn.execute(query).scalar_one())


def billing_run(settings: Any, engine: sa.Engine, n: int) -> dict[str, float]:
    simulated = settings.model_copy(update={"clock": "simulated", "simulated_clock_start": JAN_1.isoformat(),
                                            "payment_gateway": "simulated", "scheduler_interval_s": 0.2})
    worker = build_worker(simulated, session_timeout_ms=10_000)
    gc.collect()
    gc.freeze()  # as `python -m services.billing_worker` does once the worker is built (shared/runtime.py)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        time.sleep(5)  # join the group before the clock moves
        started = time.perf_counter()
        DatabaseClock(engine, JAN_1).advance(FEB_1 - JAN_1 + timedelta(seconds=1))
        invoiced = paid = None
        deadline = started + max(600.0, n / 20)
        while time.perf_counter() < deadline and paid is None:
            time.sleep(0.5)
            if invoiced is None and _count(engine) >= n:
                invoiced = time.perf_counter() - started
                deadline = time.perf_counter() + max(300.0, n / 50)
            if invoiced is not None and _count(engine, status="paid") >= n:
                paid = time.perf_counter() - started
    finally:
        stop.set()
        thread.join(120)
        gc.unfreeze()
    if invoiced is None or paid is None:
        raise RuntimeError(f"billing run incomplete: {_count(engine)} of {n} invoices stored, "
                           f"{_count(engine, status='paid')} paid")
    return {"invoiced": invoiced, "paid": paid}


def naive_billing_loop(engine: sa.Engine, n: int) -> float:
    """The seed's BillingEngine: per subscription, query, check, insert, charge, update, update."""
    gateway = SimulatedGateway(InMemoryProviderRecord())
    with engine.begin() as conn:
        conn.execute(sa.insert(subscriptions), [{
            "subscription_id": s, "customer_id": c, "plan_id": "pro", "status": "active", "seats": 1,
            "currency": "USD", "anchor_day": 1, "current_period_start": JAN_1, "current_period_end": FEB_1,
            "started_at": JAN_1, "payment_method_id": "pm_card_visa"} for s, c in _subscriptions(n)])
    conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    started = time.perf_counter()
    due = conn.execute(sa.select(subscriptions.c.subscription_id).where(
        subscriptions.c.status == "active", subscriptions.c.current_period_end <= FEB_1)).scalars().all()
    for sub_id in due:
        sub = conn.execute(sa.select(subscriptions).where(subscriptions.c.subscription_id == sub_id)).one()
        exists = conn.execute(sa.select(invoices.c.invoice_id).where(
            invoices.c.subscription_id == sub_id, invoices.c.period_end == sub.current_period_end)).first()
        if exists:
            continue
        invoice_id = derived_id("in", sub_id, sub.current_period_end)
        conn.execute(sa.insert(invoices).values(
            invoice_id=invoice_id, subscription_id=sub_id, customer_id=sub.customer_id, kind="period_close",
            period_start=sub.current_period_start, period_end=sub.current_period_end, status="draft",
            currency="USD", total_minor=900, amount_due_minor=900))
        outcome = gateway.charge(ChargeRequest(invoice_id=invoice_id, amount=Money(900, "USD"),
                                               customer_id=sub.customer_id, payment_method_id="pm_card_visa",
                                               idempotency_key=f"bill_{sub_id}_{sub.current_period_end}"))
        conn.execute(sa.update(invoices).where(invoices.c.invoice_id == invoice_id).values(
            status="paid", number=f"NAIVE-{uuid.uuid4().hex[:10]}", paid_at=FEB_1, amount_paid_minor=900,
            provider_ref=outcome.provider_ref))
        conn.execute(sa.update(subscriptions).where(subscriptions.c.subscription_id == sub_id).values(
            current_period_start=FEB_1, current_period_end=datetime(2026, 3, 1, tzinfo=UTC)))
    elapsed = time.perf_counter() - started
    conn.close()
    return len(due) / elapsed


def run(ctx: Any) -> dict[str, dict[str, Any]]:
    n = int(os.environ.get("BILLING_BENCH_BILLING_SUBSCRIPTIONS", "100000"))
    naive_ctx = ctx.fresh("billing_naive") if hasattr(ctx, "fresh") else ctx
    naive_rate = naive_billing_loop(naive_ctx.engine, min(n, NAIVE_SUBSCRIPTIONS))
    seed(ctx.engine, n)
    run_times = billing_run(ctx.settings, ctx.engine, n)
    scale = 100_000 / n
    unit = "s" if n == 100_000 else f"s (measured on {n:,} subscriptions, scaled linearly)"
    return {
        "billing_run_100k_seconds": {"value": round(run_times["invoiced"] * scale, 2), "unit": unit,
                                     "baseline": None},
        "billing_run_invoices_per_s": {"value": round(n / run_times["invoiced"], 1), "unit": "invoices/s",
                                       "baseline": "naive_billing_run_invoices_per_s"},
        "billing_run_paid_seconds": {"value": round(run_times["paid"] * scale, 2), "unit": unit,
                                     "baseline": None},
        "naive_billing_run_invoices_per_s": {"value": round(naive_rate, 1), "unit": "invoices/s",
                                             "baseline": None},
    }

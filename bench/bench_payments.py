"""Payments at the provider's rate limit: `billing_run_paid_seconds` for N finalised invoices.

Setup (not timed): N subscriptions on the Pro plan (USD 9.00, pm_card_visa) are created through the billing
handlers, which finalise N first invoices and write one pending payment attempt each; the attempts are held
(leased a day ahead) until the worker has joined its group.

Timed: the attempts are released; the worker process's payment executor (the production `PaymentExecutor`,
BILLING_PAYMENT_CONCURRENCY threads) charges them through the simulated provider, which limits operations per
second like Stripe (429 beyond `LIMIT`), via the paced gateway at the same limit (`RateLimitedGateway`: one token
bucket shared by the threads, a charge = create + confirm = 2 calls, 429s retried after Retry-After). Each
outcome goes through payments.v1 back to the exactly-once consumer, which marks the invoice paid;
`billing_run_paid_seconds` is the time until all N invoices are paid; `payments_charged_seconds` the time until
the provider has charged all N (the executor's pace alone, without the payments.v1 round trip).

The bound is N / (LIMIT / 2): the provider allows no faster. Reported: the bound, the ratio paid/bound (target
<= 1.2), double charges counted in the provider's own books (succeeded charges per invoice beyond one), declines
(attempts declined, `payment.failed` events: none may come from a rate limit, and every card here is good) and
the provider's 429 answers. N and LIMIT: BENCH_PAYMENTS_INVOICES (1,500) and BENCH_PAYMENTS_RATE_LIMIT
(100 operations/s, Stripe's live-mode default): a 30 s bound. At 1,000 operations/s (12,000 invoices, 24 s bound)
the payments.v1 round trip, not the provider, is the limit on a loaded 2-core machine: the worker applies each
`payment.succeeded` with its own statements (see the report in results.json).
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from services.billing_worker.bootstrap import billing_handlers, build_worker, message_bus, sql_unit_of_work
from services.billing_worker.entrypoints.executor import PaymentExecutor
from shared.adapters.catalog_file import load_default_catalog
from shared.adapters.payments.rate_limit import RateLimitedGateway, client_bucket
from shared.adapters.payments.simulated import InMemoryProviderRecord, SimulatedGateway
from shared.adapters.postgres.schema.billing import invoices, payment_attempts
from shared.adapters.postgres.schema.core import outbox
from shared.bootstrap import build_clock
from shared.contracts.envelope import new_envelope
from shared.contracts.messages import CreateSubscription

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
INVOICES = int(os.environ.get("BENCH_PAYMENTS_INVOICES", "1500"))
LIMIT = float(os.environ.get("BENCH_PAYMENTS_RATE_LIMIT", "100"))
CALLS_PER_PAYMENT = 2  # PaymentIntent create + confirm (a first charge of an invoice)
SEED_BATCH = 2_000
METRICS = ("billing_run_paid_seconds", "payments_charged_seconds", "payments_rate_limit_bound_seconds",
           "payments_per_s", "payments_double_charges", "payments_declined", "payments_rate_limited_answers")


def seed(engine: sa.Engine, n: int) -> None:
    """N subscriptions, N open first invoices, N pending attempts held for a day."""
    catalog = load_default_catalog()
    bus, unit_of_work = message_bus(billing_handlers()), sql_unit_of_work(catalog)
    for start in range(0, n, SEED_BATCH):
        payloads = [CreateSubscription(subscription_id=f"sub_p{i:07d}", customer_id=f"cus_p{i:07d}", plan_id="pro",
                                       currency="USD", payment_method_id="pm_card_visa")
                    for i in range(start, min(n, start + SEED_BATCH))]
        items = [(new_envelope("subscription.create", p.model_dump(mode="json"), producer="bench",
                               occurred_at=JAN_1), p) for p in payloads]
        with engine.begin() as conn:
            bus.handle(unit_of_work(conn), items, JAN_1)
    with engine.begin() as conn:
        conn.execute(sa.update(payment_attempts).values(lease_until=sa.func.now() + sa.text("interval '1 day'")))


def _scalar(engine: sa.Engine, query: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def _open_invoices(engine: sa.Engine) -> int:
    return _scalar(engine, sa.select(sa.func.count()).select_from(invoices).where(invoices.c.status == "open"))


def _paid(engine: sa.Engine) -> int:
    return _scalar(engine, sa.select(sa.func.count()).select_from(invoices).where(invoices.c.status == "paid"))


def _relayed(engine: sa.Engine) -> int:
    return _scalar(engine, sa.select(sa.func.count()).select_from(outbox).where(
        outbox.c.event_type == "payment.succeeded", outbox.c.published_at.is_not(None)))


def pay(settings: Any, engine: sa.Engine, n: int, limit: float) -> dict[str, Any]:
    simulated = SimulatedGateway(InMemoryProviderRecord(), rate_limit_per_s=limit)
    gateway = RateLimitedGateway(simulated, client_bucket(limit), calls_for_charge=simulated.calls_for_charge)
    live = settings.model_copy(update={"clock": "simulated", "simulated_clock_start": JAN_1.isoformat(),
                                       "payment_rate_limit_per_s": limit, "simulated_gateway_rate_limit_per_s": limit})
    # The worker without its own background tasks: the executor below is the production one, given this
    # gateway so that the provider's books and its 429 count can be read after the run.
    worker = build_worker(live, background=False, session_timeout_ms=10_000)
    executor = PaymentExecutor(engine, gateway, build_clock(live, engine), concurrency=live.payment_concurrency)
    gc.collect()
    gc.freeze()
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    paid_s = charged_s = None
    try:
        time.sleep(5)  # join the group before the attempts are released
        executor.start()
        started = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(sa.update(payment_attempts).values(lease_until=None))
        deadline = started + max(300.0, 5 * n * CALLS_PER_PAYMENT / limit)
        next_note = started + 5
        while time.perf_counter() < deadline and paid_s is None:
            time.sleep(0.2)
            if time.perf_counter() >= next_note:  # where the pipeline stands: charged, relayed, paid
                next_note += 5
                print(f"[bench]   {time.perf_counter() - started:5.1f} s: {len(_provider_charges(simulated)):,} "
                      f"charged, {_relayed(engine):,} outcomes relayed, {_paid(engine):,} paid", flush=True)
            if charged_s is None and len(_provider_charges(simulated)) >= n:
                charged_s = time.perf_counter() - started
            if _paid(engine) >= n:
                paid_s = time.perf_counter() - started
    finally:
        executor.stop()
        stop.set()
        thread.join(120)
        gc.unfreeze()
    if paid_s is None:
        raise RuntimeError(f"payments incomplete: {_paid(engine)} of {n} invoices paid, "
                           f"{len(_provider_charges(simulated))} charges at the provider")
    return {"paid_s": paid_s, "charged_s": charged_s, "simulated": simulated, "gateway": gateway}


def _provider_charges(simulated: SimulatedGateway) -> list[Any]:
    record = simulated.record
    assert isinstance(record, InMemoryProviderRecord)
    return [c for c in record.charges() if c.succeeded]


def run(ctx: Any) -> dict[str, dict[str, Any]]:
    n, limit = INVOICES, LIMIT
    seed(ctx.engine, n)
    if _open_invoices(ctx.engine) != n:
        raise RuntimeError(f"seeding left {_open_invoices(ctx.engine)} open invoices, not {n}")
    result = pay(ctx.settings, ctx.engine, n, limit)
    per_invoice = Counter(c.invoice_id for c in _provider_charges(result["simulated"]))
    doubles = sum(count - 1 for count in per_invoice.values() if count > 1)
    with ctx.engine.connect() as conn:
        declined = int(conn.execute(sa.select(sa.func.count()).select_from(payment_attempts).where(
            payment_attempts.c.status == "declined")).scalar_one())
        failed_events = int(conn.execute(sa.select(sa.func.count()).select_from(outbox).where(
            outbox.c.event_type == "payment.failed")).scalar_one())
    bound = n * CALLS_PER_PAYMENT / limit
    print(f"[bench] payments: {n:,} invoices at {limit:,.0f} operations/s ({CALLS_PER_PAYMENT} per payment): "
          f"bound {bound:.1f} s, all charged at the provider in {result['charged_s']:.1f} s, all paid in "
          f"{result['paid_s']:.1f} s (x{result['paid_s'] / bound:.2f} the bound); {len(per_invoice):,} invoices "
          f"charged, {doubles} double charges, {declined} declined attempts, {failed_events} payment.failed, "
          f"{result['simulated'].rate_limited_answers} answers 429", flush=True)
    unit = f"s ({n:,} invoices, limit {limit:,.0f} ops/s)"
    return {
        "billing_run_paid_seconds": {"value": round(result["paid_s"], 2), "unit": unit,
                                     "baseline": "payments_rate_limit_bound_seconds"},
        "payments_charged_seconds": {"value": round(result["charged_s"], 2), "unit": unit,
                                     "baseline": "payments_rate_limit_bound_seconds"},
        "payments_rate_limit_bound_seconds": {"value": round(bound, 2), "unit": unit, "baseline": None},
        "payments_per_s": {"value": round(n / result["paid_s"], 1), "unit": "payments/s", "baseline": None},
        "payments_double_charges": {"value": doubles, "unit": "charges",
                                    "baseline": None},
        "payments_declined": {"value": declined + failed_events, "unit": "attempts + events", "baseline": None},
        "payments_rate_limited_answers": {"value": result["simulated"].rate_limited_answers, "unit": "429s",
                                          "baseline": None},
    }

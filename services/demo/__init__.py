"""`make demo` / `billing demo`: a realistic simulated billing month on the real local stack.

1. starts the local stack, a fresh schema and topic prefix, and the three services as separate processes
   (simulated billing clock from 2026-01-01, simulated payment gateway scripted by Stripe test cards);
2. onboards the population (usage tiers, report-quota orgs, coupons, trials, failing cards) over HTTP;
3. drives a month of usage, half through the SDK straight to Kafka and half over HTTP, plus report
   credits, with upgrades, downgrades, seat changes, top-ups and cancellations mid-month;
4. advances the clock through month end and 15 days of dunning (some customers replace their card, a few
   pay on the provider's hosted page and the webhook is lost: the dunning service's reconciliation finds
   those payments, and the demo waits for it); period-close invoices stay drafts for an hour (usage still in
   flight lands on them); two days after the close an operator voids a few open invoices and issues credit
   notes on paid ones (half refunded through the gateway, half credited to the customer's balance);
5. audits invariants in PostgreSQL, writes var/demo/summary.json and the invoices as HTML, and exits
   non-zero if an invariant fails. It stops the services it started, and the stack unless asked not to.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import sqlalchemy as sa
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from services.demo.audit import run_invariants, summarise
from services.demo.paid_at_provider import pay_on_hosted_page
from services.demo.population import GOOD_CARD, REPLACEMENT_CARD, DemoCustomer, build_population
from services.demo.processes import Quiescence, ServiceProcess, free_port, wait_http_ready
from services.demo.render import render_invoices
from services.demo.screens import showcase_customer, take
from services.demo.summary_text import summary_rows
from services.demo.webhook_receiver import WebhookReceiver
from shared.adapters.kafka.producer import KafkaProducer
from shared.adapters.postgres.engine import make_engine
from shared.adapters.postgres.migrate import upgrade
from shared.config import Settings
from shared.sdk.envelopes import usage_message
from shared.sdk.events import UsageEvent

REPO = Path(__file__).resolve().parent.parent.parent
OUT = REPO / "var" / "demo"
START = datetime(2026, 1, 1, tzinfo=UTC)
ADMIN_KEY = "demo-admin-" + uuid.uuid4().hex
WEBHOOK_SECRET = "whsec_demo_" + uuid.uuid4().hex
console = Console()


class Counters:
    def __init__(self) -> None:
        self.c: Counter[str] = Counter()

    def add(self, key: str, n: int = 1) -> None:
        self.c[key] += n


# ------------------------------------------------------------------------------------------- setup


def _stack_up() -> dict[str, str]:
    out = subprocess.run([sys.executable, str(REPO / "deploy" / "stack.py"), "up", "--json"],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        console.print(out.stderr)
        raise SystemExit(2)
    endpoints: dict[str, str] = json.loads(out.stdout.strip().splitlines()[-1])
    return endpoints


def _prepare(endpoints: dict[str, str], run_id: str) -> tuple[Settings, dict[str, str]]:
    from shared.adapters.kafka.admin import create_topics

    schema, prefix = f"demo_{run_id}", f"demo{run_id}."
    upgrade(endpoints["BILLING_DATABASE_URL"], schema)
    create_topics(endpoints["BILLING_KAFKA_BOOTSTRAP"], prefix=prefix, partitions=6)
    env = {
        "BILLING_KAFKA_BOOTSTRAP": endpoints["BILLING_KAFKA_BOOTSTRAP"],
        "BILLING_DATABASE_URL": endpoints["BILLING_DATABASE_URL"],
        "BILLING_STRIPE_API_BASE": endpoints["BILLING_STRIPE_API_BASE"],
        "BILLING_DATABASE_SCHEMA": schema,
        "BILLING_TOPIC_PREFIX": prefix,
        "BILLING_CONSUMER_GROUP": f"billing-worker-{run_id}",
        "BILLING_CLOCK": "simulated",
        "BILLING_SIMULATED_CLOCK_START": START.isoformat(),
        "BILLING_PAYMENT_GATEWAY": "simulated",
        "BILLING_ADMIN_API_KEY": ADMIN_KEY,
        "BILLING_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "BILLING_HTTP_PORT": str(free_port()),
        "BILLING_LOG_LEVEL": "INFO",
        "BILLING_SCHEDULER_INTERVAL_S": "0.5",
        # Period-close invoices stay drafts for an hour of the simulated clock: usage still in the Kafka
        # backlog when January ends is billed on January's invoice, not as a late adjustment on March's.
        "BILLING_INVOICE_GRACE_SECONDS": "3600",
    }
    settings = Settings(**{k.removeprefix("BILLING_").lower(): v for k, v in env.items()})  # type: ignore[arg-type]
    return settings, env


# ------------------------------------------------------------------------------------------- HTTP helpers


class Edge:
    def __init__(self, base_url: str, counters: Counters) -> None:
        self.http = httpx.AsyncClient(base_url=base_url, timeout=60,
                                      headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                                      limits=httpx.Limits(max_connections=32))
        self.counters = counters

    async def call(self, method: str, path: str, body: Any = None, *, expect: tuple[int, ...] = (200, 201, 202),
                   idempotent: bool = True) -> httpx.Response:
        headers = {"Idempotency-Key": str(uuid.uuid4())} if method == "POST" and idempotent else {}
        # Every call here is safe to repeat (same Idempotency-Key, enquiry ids, usage deduplicated on
        # transaction id), so a connection the server closed under us (keep-alive race) is simply retried.
        for attempt in range(6):
            try:
                resp = await self.http.request(method, path, json=body, headers=headers)
            except httpx.TransportError:
                if attempt == 5:
                    raise
                self.counters.add("http_transport_retries")
                await asyncio.sleep(0.2 * (attempt + 1))
                continue
            if resp.status_code in (503, 409) and "in flight" in resp.text.lower():
                await asyncio.sleep(0.2 * (attempt + 1))
                continue
            break
        self.counters.add(f"http_{resp.status_code}")
        if resp.status_code not in expect:
            self.counters.add("http_unexpected")
            if self.counters.c["http_unexpected"] <= 10:
                console.print(f"[yellow]{method} {path} -> {resp.status_code}[/yellow] {resp.text[:300]}")
        return resp

    async def advance(self, **delta: int) -> datetime:
        resp = await self.call("POST", "/v1/clock/advance", delta)
        resp.raise_for_status()
        return datetime.fromisoformat(resp.json()["now"])

    async def close(self) -> None:
        await self.http.aclose()


async def _gather_limited(coros: list[Any], limit: int = 24) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def run(c: Any) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(run(c) for c in coros))


# ------------------------------------------------------------------------------------------- phases


async def onboard(edge: Edge, people: list[DemoCustomer], progress: Progress) -> None:
    task = progress.add_task("onboarding customers", total=len(people))

    async def one(c: DemoCustomer) -> None:
        body = {"external_id": c.external_id, "kind": c.kind, "name": c.name, "email": c.email,
                "currency": c.currency, "timezone": c.timezone, "tax_rate_bps": c.tax_rate_bps,
                "members": [{"user_id": m} for m in c.members], "aliases": [f"alias-{c.external_id}"]}
        if c.payment_method:
            body["payment_method_id"] = c.payment_method
        resp = await edge.call("POST", "/v1/customers", body)
        if resp.status_code in (200, 201):
            c.customer_id = resp.json()["customer_id"]
            await subscribe(edge, c)
        progress.advance(task)

    await _gather_limited([one(c) for c in people], limit=16)


async def subscribe(edge: Edge, c: DemoCustomer) -> None:
    plan = c.plan_id or "reports_trial"
    body: dict[str, Any] = {"customer_id": c.customer_id, "plan_id": plan, "seats": c.seats,
                            "trial_days": c.trial_days, "coupon_id": c.coupon_id}
    if c.payment_method:
        body["payment_method_id"] = c.payment_method
    resp = await edge.call("POST", "/v1/subscriptions", body)
    if resp.status_code in (200, 201, 202):
        c.subscription_id = resp.json()["subscription_id"]
    if c.segment == "reports":
        quota = f"/v1/quota/orgs/{c.customer_id}"
        if c.plan_id:
            await edge.call("PUT", f"{quota}/plan", {"plan": c.plan_id, "subscription_id": c.subscription_id or None})
        else:
            await edge.call("POST", f"{quota}/trial", {})
        if c.user_limit:
            await edge.call("PUT", f"{quota}/user-limit", {"limit": c.user_limit})


def usage_for_day(c: DemoCustomer, day_start: datetime, rng: random.Random, until: datetime) -> list[UsageEvent]:
    """Inference calls priced in micro-dollars (mostly small, some large) and a daily storage sample."""
    if c.segment != "usage" or not c.subscription_id:
        return []
    span = int((until - day_start).total_seconds())
    calls = max(0, int(rng.gauss(6, 3) * c.usage_intensity * (c.seats if c.kind == "org" else 1) ** 0.5))
    events = []
    for n in range(calls):
        at = day_start + timedelta(seconds=rng.randrange(span))
        cost = int(rng.lognormvariate(8.5, 1.3))  # ~USD 0.005 median, long tail
        events.append(UsageEvent(transaction_id=f"{c.external_id}-{day_start:%m%d}-inf-{n}", customer_id=c.customer_id,
                                 event_type="inference", timestamp=at,
                                 properties={"model": rng.choice(("llama-3-8b", "mixtral-8x7b", "flux-dev")),
                                             "cost_usd_micros": cost}))
    stored_gb = 20 * c.usage_intensity * (c.seats if c.kind == "org" else 1)
    events.append(UsageEvent(transaction_id=f"{c.external_id}-{day_start:%m%d}-sto", customer_id=c.customer_id,
                             event_type="storage_usage", timestamp=day_start + timedelta(hours=12),
                             properties={"gb_months": f"{stored_gb / 31:.6f}"}))
    return events


async def send_usage(edge: Edge, producer: KafkaProducer, events: list[tuple[DemoCustomer, UsageEvent]],
                     rng: random.Random, counters: Counters, received_at: datetime) -> None:
    """Half the events over HTTP (batches of up to 1000), half through the SDK straight to Kafka; a few
    duplicates and invalid events on purpose, to show dedupe and per-event rejection."""
    http_batch: list[dict[str, Any]] = []
    kafka_batch = []
    for c, e in events:
        if rng.random() < 0.5:
            http_batch.append(orjson.loads(e.model_dump_json()))
        else:
            kafka_batch.append(usage_message(e, customer_id=c.customer_id, subscription_id=c.subscription_id,
                                             received_at=received_at, producer="demo-sdk"))
    # duplicates (a producer retrying) and a few bad events (clock skew, unknown customer, negative value)
    http_batch += [dict(ev) for ev in rng.sample(http_batch, min(len(http_batch), max(1, len(http_batch) // 50)))]
    if http_batch:
        bad = dict(http_batch[0], transaction_id=f"bad-{uuid.uuid4().hex[:8]}")
        http_batch += [dict(bad, timestamp="2025-01-01T00:00:00Z"),
                       dict(bad, transaction_id=bad["transaction_id"] + "-u", customer_id="nobody-knows-me"),
                       dict(bad, transaction_id=bad["transaction_id"] + "-n", properties={"cost_usd_micros": -5})]
    if kafka_batch:
        await producer.send_async(kafka_batch)
        counters.add("usage_sent_kafka", len(kafka_batch))
    for i in range(0, len(http_batch), 1000):
        resp = await edge.call("POST", "/v1/ingest", http_batch[i:i + 1000], idempotent=False)
        if resp.status_code == 200:
            body = resp.json()
            counters.add("usage_http_accepted", body["accepted"])
            counters.add("usage_http_rejected", body["rejected"])
            counters.add("usage_http_parked", body["parked"])


async def use_report_credits(edge: Edge, reporters: list[DemoCustomer], day: int, rng: random.Random,
                             counters: Counters) -> None:
    calls = []
    for c in reporters:
        monthly = {"reports_ultimate": 900, "reports_enterprise": 480, "reports_basic": 110,
                   "reports_lite": 25}.get(c.plan_id or "", 12)
        for n in range(max(0, int(rng.gauss(monthly / 31, monthly / 80) * c.usage_intensity ** 0.5))):
            calls.append((c, f"enq-{c.external_id}-{day}-{n}", rng.choice(c.members)))

    async def one(c: DemoCustomer, enquiry: str, user: str) -> None:
        resp = await edge.call("POST", f"/v1/quota/orgs/{c.customer_id}/report-credits",
                               {"user_id": user, "enquiry_id": enquiry}, expect=(200, 201, 402, 429))
        counters.add("reports_allowed" if resp.status_code in (200, 201) else "reports_denied")
        if resp.status_code in (402, 429):
            counters.add(f"reports_denied_{resp.json().get('reason', resp.json().get('slug', 'other'))}")

    await _gather_limited([one(*c) for c in calls], limit=24)


async def mid_month_changes(edge: Edge, people: list[DemoCustomer], rng: random.Random, counters: Counters) -> None:
    subs = [c for c in people if c.subscription_id and c.segment == "usage"]
    by_plan: dict[str, list[DemoCustomer]] = {}
    for c in subs:
        by_plan.setdefault(c.plan_id or "", []).append(c)
    ops: list[tuple[str, DemoCustomer, str, dict[str, Any]]] = []
    # NOTE: like Stripe's default (allow_incomplete), the engine accepts an upgrade without a card and lets
    # dunning chase the invoice; the demo's users upgrade only once they have a card on file.
    free_with_card = [c for c in by_plan.get("free", []) if c.payment_method]
    for c in rng.sample(free_with_card, min(25, len(free_with_card))):
        ops.append(("upgrade", c, "change-plan", {"plan_id": "pro"}))
    for c in rng.sample(by_plan.get("pro", []), min(10, len(by_plan.get("pro", [])))):
        ops.append(("downgrade", c, "change-plan", {"plan_id": "free"}))
    for c in rng.sample(by_plan.get("team", []), min(8, len(by_plan.get("team", [])))):
        ops.append(("upgrade", c, "change-plan", {"plan_id": "enterprise"}))
    for c in rng.sample(by_plan.get("enterprise", []), min(4, len(by_plan.get("enterprise", [])))):
        ops.append(("downgrade", c, "change-plan", {"plan_id": "team"}))
    orgs = by_plan.get("team", []) + by_plan.get("enterprise", [])
    for c in rng.sample(orgs, min(20, len(orgs))):
        ops.append(("seats", c, "seats", {"seats": max(1, c.seats + rng.choice((-2, -1, 2, 3, 5)))}))
    for c in rng.sample(subs, min(12, len(subs))):
        ops.append(("cancel", c, "cancel", {"at_period_end": rng.random() < 0.6, "reason": "demo churn"}))
    done: set[str] = set()

    async def one(kind: str, c: DemoCustomer, action: str, body: dict[str, Any]) -> None:
        if c.external_id in done:
            return
        done.add(c.external_id)
        resp = await edge.call("POST", f"/v1/subscriptions/{c.subscription_id}/{action}", body,
                               expect=(200, 202, 409))
        counters.add(f"change_{kind}_{'ok' if resp.status_code in (200, 202) else 'refused'}")
        if resp.status_code in (200, 202) and action == "change-plan":
            c.plan_id = body["plan_id"]

    await _gather_limited([one(*op) for op in ops], limit=8)
    reporters = [c for c in people if c.segment == "reports" and c.plan_id]
    for c in rng.sample(reporters, min(15, len(reporters))):
        resp = await edge.call("POST", f"/v1/quota/orgs/{c.customer_id}/top-ups",
                               {"reports": rng.choice((10, 25, 50)), "top_up_id": f"topup-{c.external_id}"})
        counters.add("top_ups" if resp.status_code == 200 else "top_ups_failed")


async def catalog_through_the_api(edge: Edge, counters: Counters) -> None:
    """Part of the catalog is made through the API, not YAML: a launch coupon some customers subscribe with."""
    resp = await edge.call("POST", "/v1/coupons", {
        "id": "LAUNCH15", "name": "15% off the first three months", "percent_off": "15", "duration": "repeating",
        "duration_periods": 3, "max_redemptions": 40}, expect=(200, 201))
    counters.add("catalog_coupons_created" if resp.status_code in (200, 201) else "catalog_coupon_failed")


async def price_change(edge: Edge, people: list[DemoCustomer], rng: random.Random, counters: Counters) -> None:
    """Mid-month the pro fee goes up by USD 1 through the API: a new plan version that new subscribers get, while
    six pro subscribers are migrated to it at their period end (January is still billed at the old price)."""
    resp = await edge.call("GET", "/v1/plans/pro")
    if resp.status_code != 200:
        counters.add("catalog_price_change_failed")
        return
    definition = dict(resp.json()["definition"])
    definition.pop("id", None)
    definition["price"] = str(Decimal(definition["price"]) + 1)
    created = await edge.call("POST", "/v1/plans/pro/versions", definition, expect=(200, 201))
    if created.status_code not in (200, 201):
        counters.add("catalog_price_change_failed")
        return
    counters.add("catalog_plan_versions_created")
    pro = [c for c in people if c.subscription_id and c.plan_id == "pro"]
    for c in rng.sample(pro, min(6, len(pro))):
        moved = await edge.call("POST", f"/v1/subscriptions/{c.subscription_id}/migrate", {"at": "period_end"},
                                expect=(200, 202, 409))
        counters.add("catalog_migrations_scheduled" if moved.status_code in (200, 202) else "catalog_migration_refused")


async def sell_prepaid_credits(edge: Edge, people: list[DemoCustomer], rng: random.Random,
                               counters: Counters) -> None:
    """Some pro customers with a working card buy USD 20 of inference credit: an invoice charged at once, the
    credit granted when it is paid (and drawn at the close)."""
    buyers = [c for c in people if c.subscription_id and c.plan_id == "pro" and c.payment_method == GOOD_CARD]
    for c in rng.sample(buyers, min(10, len(buyers))):
        resp = await edge.call("POST", f"/v1/subscriptions/{c.subscription_id}/credit-purchases",
                               {"meter_id": "inference", "amount_minor": 2000}, expect=(200, 201, 202))
        counters.add("credit_purchases_made" if resp.status_code in (200, 201, 202) else "credit_purchase_failed")


async def corrections(edge: Edge, people: list[DemoCustomer], rng: random.Random, counters: Counters) -> None:
    """An operator's corrections after the close: void a few invoices still open, and credit notes on paid
    ones (half refunded through the gateway, half credited to the customer's balance, which their next invoice
    draws from)."""
    subscribers = [c for c in people if c.customer_id and c.subscription_id]
    open_invoices: list[dict[str, Any]] = []
    paid_invoices: list[dict[str, Any]] = []
    for c in rng.sample(subscribers, min(160, len(subscribers))):
        resp = await edge.call("GET", f"/v1/customers/{c.customer_id}/invoices")
        for inv in resp.json().get("data", []) if resp.status_code == 200 else []:
            if inv["status"] == "open" and inv["amount_paid_minor"] == 0:
                open_invoices.append(inv)
            elif inv["status"] == "paid" and inv["amount_paid_minor"] >= 200:
                paid_invoices.append(inv)

    async def void(inv: dict[str, Any]) -> None:
        resp = await edge.call("POST", f"/v1/invoices/{inv['invoice_id']}/void", {"reason": "demo: billed in error"},
                               expect=(200, 202))
        counters.add("corrections_voided" if resp.status_code in (200, 202) else "corrections_void_failed")

    async def credit(inv: dict[str, Any], refund: bool) -> None:
        amount = inv["amount_paid_minor"] // 4
        body = {"amount_minor": amount, "reason": "product_unsatisfactory", "memo": "demo: goodwill credit",
                **({"refund_minor": amount} if refund else {"credit_minor": amount})}
        resp = await edge.call("POST", f"/v1/invoices/{inv['invoice_id']}/credit-notes", body, expect=(200, 201, 202))
        ok = resp.status_code in (200, 201, 202)
        counters.add(f"corrections_credit_notes_{'refunded' if refund else 'to_balance'}" if ok
                     else "corrections_credit_note_failed")

    await _gather_limited([void(i) for i in open_invoices[:4]], limit=4)
    chosen = paid_invoices[:12]
    await _gather_limited([credit(inv, n % 2 == 0) for n, inv in enumerate(chosen)], limit=4)


def stripe_signature(payload: bytes, secret: str, at: int) -> str:
    mac = hmac.new(secret.encode(), f"{at}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={at},v1={mac}"


async def replace_cards(edge: Edge, people: list[DemoCustomer], counters: Counters) -> None:
    """Stripe tells us a customer attached a new card (payment_method.attached): dunning retries at once."""
    for c in people:
        if not (c.fixes_card_during_dunning and c.customer_id):
            continue
        resp = await edge.http.get(f"/v1/customers/{c.customer_id}")
        stripe_id = resp.json().get("stripe_customer_id")
        if not stripe_id:
            continue
        event = {"id": f"evt_demo_{uuid.uuid4().hex[:16]}", "object": "event", "type": "payment_method.attached",
                 "created": int(time.time()), "data": {"object": {"id": REPLACEMENT_CARD, "object": "payment_method",
                                                                  "customer": stripe_id}}}
        payload = orjson.dumps(event)
        r = await edge.http.post("/v1/webhooks/stripe", content=payload, headers={
            "Stripe-Signature": stripe_signature(payload, WEBHOOK_SECRET, int(time.time())),
            "Content-Type": "application/json"})
        counters.add("cards_replaced" if r.status_code == 200 else "card_replace_failed")


# ------------------------------------------------------------------------------------------- the month


async def register_webhook_endpoint(edge: Edge, receiver: WebhookReceiver) -> None:
    """The operator subscribes an endpoint to every event; the secret is shown once, the receiver keeps it."""
    resp = await edge.call("POST", "/v1/webhook-endpoints", {"url": receiver.url, "events": ["*"],
                                                              "description": "demo receiver"})
    resp.raise_for_status()
    receiver.secret = resp.json()["secret"]


def wait_for_deliveries(engine: sa.Engine, timeout_s: float = 180) -> int:
    """Wait until the webhooks service has no delivery left to make (it follows billing events); returns how
    many are still pending when it gives up."""
    deadline = time.monotonic() + timeout_s
    while True:
        with engine.connect() as conn:
            pending = int(conn.execute(sa.text(
                "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'")).scalar_one())
        if pending == 0 or time.monotonic() > deadline:
            return pending
        time.sleep(1)


async def simulate(settings: Settings, engine: sa.Engine, base_url: str, people: list[DemoCustomer],
                   quiet: Quiescence, counters: Counters, receiver: WebhookReceiver,
                   screens: dict[str, Any] | None = None) -> dict[str, float]:
    rng = random.Random(7)
    edge = Edge(base_url, counters)
    producer = KafkaProducer(settings, client_id="demo-sdk")
    producer.start()
    timings: dict[str, float] = {}
    try:
        with Progress(TextColumn("{task.description:<32}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=False) as progress:
            t0 = time.perf_counter()
            await register_webhook_endpoint(edge, receiver)
            await catalog_through_the_api(edge, counters)
            await onboard(edge, people, progress)
            quiet.wait()
            timings["onboarding_s"] = time.perf_counter() - t0
            reporters = [c for c in people if c.segment == "reports" and c.customer_id]
            month = progress.add_task("January: usage, reports, changes", total=31)
            t0 = time.perf_counter()
            day_start = START
            for day in range(1, 32):
                now = await edge.advance(hours=23)
                events = [(c, e) for c in people for e in usage_for_day(c, day_start, rng, now)]
                counters.add("usage_generated", len(events))
                await send_usage(edge, producer, events, rng, counters, now)
                await use_report_credits(edge, reporters, day, rng, counters)
                if day == 3:
                    # Subscriptions are charged in advance, so failing cards entered dunning on day 1;
                    # some of those customers now attach a new card.
                    await replace_cards(edge, people, counters)
                if day == 6:
                    # After the day-3 reminder and a second declined retry, a few customers pay on the
                    # provider's hosted page (once today's retries are through); its webhook never reaches
                    # the edge. The next wait lasts until the dunning service's reconciliation has found
                    # those payments and the worker applied them.
                    quiet.wait()
                    paid = pay_on_hosted_page(engine, people)
                    counters.add("paid_at_provider_without_webhook", len(paid))
                if day == 8:
                    await sell_prepaid_credits(edge, people, rng, counters)
                if day == 10:
                    await price_change(edge, people, rng, counters)
                if day == 12:
                    await mid_month_changes(edge, people, rng, counters)
                quiet.wait()
                await edge.advance(hours=1)
                day_start += timedelta(days=1)
                progress.advance(month)
            timings["month_s"] = time.perf_counter() - t0
            if screens is not None:  # the month's usage is the current period's until the close
                screens.update(await asyncio.to_thread(
                    screenshots, settings, engine, base_url, console_pages=False, usage_name="usage-january.png"))
            close = progress.add_task("February: period close + dunning", total=16)
            t0 = time.perf_counter()
            for day in range(16):
                quiet.wait(timeout=300)
                if day == 2:
                    await corrections(edge, people, rng, counters)
                await edge.advance(days=1)
                progress.advance(close)
            quiet.wait(timeout=300)
            timings["close_and_dunning_s"] = time.perf_counter() - t0
    finally:
        producer.close()
        await edge.close()
    return timings


# ------------------------------------------------------------------------------------------- entry point


def run_demo(customers: int = 600, keep_stack: bool = False) -> int:
    started = time.perf_counter()
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "logs").mkdir(parents=True)
    run_id = uuid.uuid4().hex[:8]
    console.rule("[bold]OpenLedger Billing demo: a simulated month")
    endpoints = _stack_up()
    settings, env = _prepare(endpoints, run_id)
    base_url = f"http://127.0.0.1:{env['BILLING_HTTP_PORT']}"
    services = [ServiceProcess(name, [name], env, OUT / "logs" / f"{name}.log")
                for name in ("ingest", "worker", "dunning", "webhooks")]
    engine = make_engine(settings, pool_size=4)
    counters = Counters()
    people = build_population(customers)
    receiver = WebhookReceiver()
    receiver.start()
    code = 1
    try:
        for s in services:
            s.start()
        wait_http_ready(base_url, services[0])
        console.print(f"services up: edge {base_url}, schema {settings.database_schema}, "
                      f"logs in {OUT / 'logs'}")
        quiet = Quiescence(settings, engine, dunning_group=f"{settings.topic_prefix}dunning")
        screens: dict[str, Any] = {}
        timings = asyncio.run(simulate(settings, engine, base_url, people, quiet, counters, receiver, screens))
        quiet.close()
        counters.add("webhook_deliveries_still_pending", wait_for_deliveries(engine))
        for s in services:
            if not s.alive():
                raise RuntimeError(f"{s.name} died during the demo; see {s.log_path}")
        ended = screenshots(settings, engine, base_url, console_pages=True)
        screens = {**ended, "written": [*screens.get("written", []), *ended.get("written", [])],
                   "errors": [*screens.get("errors", []), *ended.get("errors", [])]}
        code = report(engine, counters, timings, time.perf_counter() - started, receiver.summary(), screens)
    finally:
        receiver.stop()
        for s in services:
            s.stop()
        engine.dispose()
        if not keep_stack:
            subprocess.call([sys.executable, str(REPO / "deploy" / "stack.py"), "down"])
    return code


def screenshots(settings: Settings, engine: sa.Engine, base_url: str, *, console_pages: bool,
                usage_name: str = "usage.png") -> dict[str, Any]:
    """PNGs of the console and a usage page under var/demo/screens/ (`services.demo.screens`); a failure is
    reported in the summary, never fatal to the billing demo."""
    try:
        customer = showcase_customer(engine)
        if customer is None:
            return {"errors": ["no customer with metered usage to show"]}
        written = take(base_url, settings.admin_api_key.get_secret_value(), customer, OUT / "screens",
                       console=console_pages, usage_name=usage_name)
        return {"customer_id": customer, "written": [str(p.relative_to(OUT.parent.parent)) for p in written]}
    except Exception as error:  # reported in the summary: screenshots never fail the billing demo
        console.print(Text(f"screenshots not taken: {type(error).__name__}: {error}", style="yellow"))
        return {"errors": [f"{type(error).__name__}: {str(error)[:300]}"]}


def report(engine: Any, counters: Counters, timings: dict[str, float], wall_s: float,
           received: dict[str, Any], screens: dict[str, Any] | None = None) -> int:
    invariants = run_invariants(engine)
    summary = summarise(engine)
    c = counters.c
    accepted = c["usage_http_accepted"] + c["usage_sent_kafka"]
    # Every admitted report is also a usage event (the quota path's outbox), so it is stored too.
    stored = summary["usage_stored"]["events"]
    expected_stored = accepted + c["reports_allowed"]
    summary["usage_events"] = {
        "generated": c["usage_generated"], "sent_http_accepted": c["usage_http_accepted"],
        "sent_sdk_kafka": c["usage_sent_kafka"], "rejected": c["usage_http_rejected"],
        "parked_unmatched": c["usage_http_parked"], "report_credit_events": c["reports_allowed"], "stored": stored,
        "deduped": max(0, expected_stored - stored),
        "by_meter": summary["usage_stored"]["by_meter"],
    }
    summary["reports"] = {k: v for k, v in c.items() if k.startswith("reports_") or k.startswith("top_ups")}
    summary["changes"] = {k: v for k, v in c.items() if k.startswith("change_") or k.startswith("card")}
    summary["catalog_and_credits"] = {
        **{k: v for k, v in c.items() if k.startswith(("catalog_", "credit_purchase"))},
        **summary.pop("catalog_and_credits_stored", {})}
    summary["corrections"] = {**{k.removeprefix("corrections_"): v for k, v in c.items()
                                 if k.startswith("corrections_")}, **summary.pop("corrections_stored", {})}
    summary["dunning"]["cards_replaced"] = c["cards_replaced"]
    summary["dunning"]["paid_at_provider_without_webhook"] = c["paid_at_provider_without_webhook"]
    summary["throughput"] = {"usage_events_per_s_during_month": round(accepted / max(timings["month_s"], 1e-9), 1),
                             **{k: round(v, 1) for k, v in timings.items()}, "wall_s": round(wall_s, 1)}
    summary["http"] = {k: v for k, v in c.items() if k.startswith("http_")}
    summary["webhooks"] = {**summary.pop("webhook_deliveries", {}), "receiver": received,
                           "still_pending": c["webhook_deliveries_still_pending"]}
    summary["invariants"] = invariants
    summary["screenshots"] = screens or {}
    n = render_invoices(engine, OUT / "invoices")
    summary["invoices_rendered"] = n
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    _print_summary(summary)
    failed = [k for k, v in invariants.items() if v is not True]
    if failed:
        console.print(f"[bold red]invariants FAILED: {failed}[/bold red]")
        return 1
    console.print(f"[bold green]all {len(invariants)} invariants hold[/bold green]; summary: {OUT / 'summary.json'}; "
                  f"invoices: {OUT / 'invoices' / 'index.html'}")
    return 0


def _print_summary(s: dict[str, Any]) -> None:
    t = Table(title="Demo summary", show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold", no_wrap=True)
    t.add_column()
    for label, text in summary_rows(s):
        t.add_row(Text(label), Text(text))  # plain text: no rich markup in the figures
    console.print(t)


if __name__ == "__main__":
    os.environ.setdefault("BILLING_LOG_JSON", "true")
    sys.exit(run_demo())

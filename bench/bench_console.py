"""Page answer times of the operator console and the customer usage page at the demo's data size.

A fresh schema is seeded with SQL (set-based INSERT ... SELECT, no worker): 600 customers (318 orgs, 282
users), one subscription each on the demo's plans (21 cancelled), 1,200 finalised invoices (the January
start invoice and the February period close, with their lines and payment attempts), ~230,000 usage events
from 2026-01-01 to the billing clock (2026-02-20 12:00, simulated) spread over the usage-tier subscriptions
with a heavy head (a few customers send most of it), and the hourly aggregates the worker would have made
from them. The report-plan orgs get their quota month with per-user counts.

The real edge (`python -m services.ingest`, uvicorn) then serves the pages over TCP; each page is requested
`REQUESTS` times one after the other (after `WARMUP` requests) and its p50/p95 are reported, with
`/healthz` measured the same way in the same run as the floor (the HTTP round trip with no work behind it).
Pages: the console overview, the busiest customer's console page and its subscription page, the invoices
list, and that customer's usage page through a portal link. The target is < 200 ms each.
Figures, not assertions; on a shared machine they are noisy: compare within one run.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from pydantic import SecretStr

REPO = Path(__file__).resolve().parent.parent
REQUESTS = int(os.environ.get("BENCH_CONSOLE_REQUESTS", "60"))
WARMUP = 5
CUSTOMERS = 600
USAGE_EVENTS = int(os.environ.get("BENCH_CONSOLE_USAGE_EVENTS", "230000"))
CLOCK = "2026-02-20T12:00:00+00:00"
ADMIN_KEY = "bench-console-admin-key"
PAGES = ("overview", "customer", "subscription", "invoices", "portal")
METRICS = (*(f"console_{p}_{q}_ms" for p in (*PAGES, "healthz") for q in ("p50", "p95")), "console_seed_seconds")

def seed_sql(usage_events: int = USAGE_EVENTS) -> list[str]:
    """The statements that seed a fresh schema (see the module docstring)."""
    return [
    # customers: 318 orgs, 282 users
    f"""INSERT INTO customers (customer_id, external_id, kind, name, email, currency, created_at)
        SELECT 'cus_' || lpad(i::text, 4, '0'), 'ext-' || i, CASE WHEN i <= 318 THEN 'org' ELSE 'user' END,
               CASE WHEN i <= 318 THEN 'Org ' ELSE 'User ' END || i, 'billing+' || i || '@example.test', 'USD',
               timestamptz '2026-01-01 00:00+00' + (i || ' seconds')::interval
        FROM generate_series(1, {CUSTOMERS}) i""",
    # one subscription each: orgs 1..160 on report plans or trial, 161..318 team/enterprise, users free/pro
    """INSERT INTO subscriptions (subscription_id, customer_id, plan_id, status, seats, currency, anchor_day,
                                  current_period_start, current_period_end, started_at, cancelled_at)
        SELECT 'sub_' || lpad(i::text, 4, '0'), 'cus_' || lpad(i::text, 4, '0'),
               CASE WHEN i <= 38 THEN 'reports_trial' WHEN i <= 103 THEN 'reports_basic'
                    WHEN i <= 135 THEN 'reports_enterprise' WHEN i <= 148 THEN 'reports_ultimate'
                    WHEN i <= 160 THEN 'reports_lite' WHEN i <= 268 THEN 'team' WHEN i <= 318 THEN 'enterprise'
                    WHEN i <= 480 THEN 'free' ELSE 'pro' END,
               CASE WHEN i % 29 = 0 THEN 'cancelled' ELSE 'active' END,
               CASE WHEN i BETWEEN 161 AND 318 THEN 2 + i % 7 ELSE 1 END, 'USD', 1,
               timestamptz '2026-02-01 00:00+00', timestamptz '2026-03-01 00:00+00',
               timestamptz '2026-01-01 00:00+00',
               CASE WHEN i % 29 = 0 THEN timestamptz '2026-01-12 00:00+00' END
        FROM generate_series(1, 600) i""",
    # two finalised invoices per subscription: January's start and February's period close
    """INSERT INTO invoices (invoice_id, subscription_id, customer_id, kind, period_start, period_end, status,
                             number, number_seq, currency, subtotal_minor, total_minor, amount_due_minor,
                             amount_paid_minor, plan_id, issued_at, due_at, paid_at)
        SELECT 'inv_' || s.n || '_' || k.kind, s.subscription_id, s.customer_id, k.kind, k.ps, k.pe,
               CASE WHEN s.n % 50 = 0 AND k.kind = 'period_close' THEN 'uncollectible'
                    WHEN s.n % 23 = 0 AND k.kind = 'period_close' THEN 'open' ELSE 'paid' END,
               'OLB-' || lpad(((s.n - 1) * 2 + k.o)::text, 6, '0'), (s.n - 1) * 2 + k.o, 'USD', t.total, t.total,
               t.total,
               CASE WHEN (s.n % 50 = 0 OR s.n % 23 = 0) AND k.kind = 'period_close' THEN 0 ELSE t.total END,
               s.plan_id, k.ps, k.ps + interval '7 days',
               CASE WHEN (s.n % 50 = 0 OR s.n % 23 = 0) AND k.kind = 'period_close' THEN NULL ELSE k.ps END
        FROM (SELECT subscription_id, customer_id, plan_id, substr(subscription_id, 5)::int AS n
              FROM subscriptions) s
        CROSS JOIN (VALUES ('subscription_start', timestamptz '2026-01-01 00:00+00',
                            timestamptz '2026-02-01 00:00+00', 1),
                           ('period_close', timestamptz '2026-02-01 00:00+00',
                            timestamptz '2026-03-01 00:00+00', 2)) AS k(kind, ps, pe, o)
        CROSS JOIN LATERAL (SELECT 900 + (s.n % 13) * 1500 AS total) t""",
    """INSERT INTO invoice_lines (invoice_id, line_no, kind, description, amount_minor, currency, quantity,
                                  unit_price, meter_id, plan_id)
        SELECT invoice_id, 1, 'fee', plan_id || ' (Feb 2026)', total_minor - 300, 'USD', 1, NULL, NULL, plan_id
        FROM invoices
        UNION ALL
        SELECT invoice_id, 2, 'usage', 'inference', 500, 'USD', 500000000, 0.000001, 'inference', plan_id
        FROM invoices
        UNION ALL
        SELECT invoice_id, 3, 'credit', 'included credit', -200, 'USD', NULL, NULL, 'inference', plan_id
        FROM invoices""",
    """INSERT INTO payment_attempts (attempt_id, invoice_id, attempt_no, subscription_id, customer_id,
                                     amount_minor, currency, idempotency_key, status, requested_at, completed_at)
        SELECT 'pa_' || invoice_id, invoice_id, 1, subscription_id, customer_id, total_minor, 'USD',
               'idem_' || invoice_id, CASE WHEN status = 'paid' THEN 'succeeded' ELSE 'declined' END,
               issued_at, issued_at
        FROM invoices""",
    # usage: inference on team/enterprise/pro/free subscriptions (161..600), storage on a fifth of them;
    # a heavy head: subscription 161 + (k^2 mod 440) picks low numbers far more often
    f"""INSERT INTO usage_events (customer_id, transaction_id, subscription_id, event_type, meter_id, quantity,
                                  occurred_at, received_at, ingested_at)
        SELECT 'cus_' || lpad(sub::text, 4, '0'), 'tx-' || k, 'sub_' || lpad(sub::text, 4, '0'),
               CASE WHEN k % 17 = 0 THEN 'storage_usage' ELSE 'inference' END,
               CASE WHEN k % 17 = 0 THEN 'storage' ELSE 'inference' END,
               CASE WHEN k % 17 = 0 THEN 0.684931 ELSE 500 + (k * 7919) % 20000 END,
               at, at, at
        FROM (SELECT k, 161 + floor(440 * power((k * 0.6180339887) % 1, 3))::int AS sub,
                     timestamptz '2026-01-01 00:00+00'
                       + ((k * 0.7548776662) % 1)::float8
                         * (timestamptz '{CLOCK}' - timestamptz '2026-01-01 00:00+00')
                       AS at
              FROM generate_series(1, {usage_events}) k) e""",
    """INSERT INTO usage_aggregates (subscription_id, meter_id, bucket_start, quantity, event_count,
                                     billed_quantity, billed_events)
        SELECT subscription_id, meter_id, date_trunc('hour', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
               sum(quantity), count(*),
               CASE WHEN max(occurred_at) < timestamptz '2026-02-01 00:00+00' THEN sum(quantity) ELSE 0 END,
               CASE WHEN max(occurred_at) < timestamptz '2026-02-01 00:00+00' THEN count(*) ELSE 0 END
        FROM usage_events GROUP BY 1, 2, 3""",
    # report-plan orgs: this month's counts, per user
    """INSERT INTO quota_orgs (org_id, plan_id, plan_monthly_reports, per_user_monthly_limit, subscription_id)
        SELECT customer_id, plan_id, CASE plan_id WHEN 'reports_basic' THEN 100 WHEN 'reports_enterprise'
               THEN 500 WHEN 'reports_ultimate' THEN 1000 WHEN 'reports_lite' THEN 20 END, 50, subscription_id
        FROM subscriptions WHERE plan_id LIKE 'reports_%' AND plan_id <> 'reports_trial'""",
    """INSERT INTO quota_org_months (org_id, month_start, month_end, plan_monthly_reports, used)
        SELECT org_id, timestamptz '2026-02-01 00:00+00', timestamptz '2026-03-01 00:00+00', plan_monthly_reports,
               least(plan_monthly_reports, 60)
        FROM quota_orgs""",
    """INSERT INTO quota_user_months (org_id, month_start, user_id, used, limit_at_last_use)
        SELECT org_id, timestamptz '2026-02-01 00:00+00', 'user-' || u, least(plan_monthly_reports, 60) / 6, 50
        FROM quota_orgs CROSS JOIN generate_series(1, 6) u""",
    ]


def seed(engine: sa.Engine, usage_events: int = USAGE_EVENTS) -> dict[str, Any]:
    """Seed the demo's data size; returns the busiest customer and its subscription (the pages to time)."""
    with engine.begin() as conn:
        for statement in seed_sql(usage_events):
            conn.execute(sa.text(statement))
        conn.execute(sa.text("ANALYZE"))
        busiest = conn.execute(sa.text(
            "SELECT subscription_id, customer_id, count(*) FROM usage_events "
            "GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 1")).one()
        counts = {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()
                  for t in ("customers", "invoices", "usage_events", "usage_aggregates")}
    return {"subscription_id": busiest[0], "customer_id": busiest[1], "counts": counts}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_edge(settings: Any) -> tuple[subprocess.Popen[bytes], str, Any]:
    port = _free_port()
    log = tempfile.TemporaryFile()
    env = {**os.environ, **settings.to_env(), "BILLING_HTTP_PORT": str(port), "BILLING_HTTP_HOST": "127.0.0.1",
           "BILLING_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "services.ingest"], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            log.seek(0)
            raise RuntimeError(f"the edge did not start:\n{log.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url, log
        except httpx.TransportError:
            time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def time_page(client: httpx.Client, path: str, requests: int = REQUESTS) -> tuple[float, float]:
    """p50 and p95 in ms of `requests` sequential GETs of `path` (after `WARMUP` untimed ones)."""
    for _ in range(WARMUP):
        response = client.get(path)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path.split('/portal/')[0] or '/portal'} answered {response.status_code}")
    samples = []
    for _ in range(requests):
        started = time.perf_counter()
        response = client.get(path)
        samples.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path} answered {response.status_code}")
    samples.sort()
    return statistics.median(samples), samples[max(0, round(0.95 * len(samples)) - 1)]


def run(ctx: Any) -> dict[str, dict[str, Any]]:
    settings = ctx.settings.model_copy(update={
        "clock": "simulated", "simulated_clock_start": CLOCK, "admin_api_key": SecretStr(ADMIN_KEY),
        "console_secret": SecretStr("bench-console-secret-0123456789"), "database_pool_size": 5})
    started = time.perf_counter()
    seeded = seed(ctx.engine)
    seed_seconds = time.perf_counter() - started
    print(f"[bench] console: seeded {seeded['counts']} in {seed_seconds:.1f} s", flush=True)
    proc, url, log = _start_edge(settings)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            login = client.post("/console/login", data={"api_key": ADMIN_KEY, "next": "/console/"})
            if login.status_code not in (200, 303) or "console_session" not in client.cookies:
                raise RuntimeError(f"console login answered {login.status_code}")
            link = client.post(f"/v1/customers/{seeded['customer_id']}/portal-links",
                               headers={"Authorization": f"Bearer {ADMIN_KEY}"})
            link.raise_for_status()
            paths = {"overview": "/console/", "customer": f"/console/customers/{seeded['customer_id']}",
                     "subscription": f"/console/subscriptions/{seeded['subscription_id']}",
                     "invoices": "/console/invoices", "portal": "/" + link.json()["url"].split("/", 3)[3],
                     "healthz": "/healthz"}
            timed = {name: time_page(client, path) for name, path in paths.items()}
    finally:
        _stop(proc)
        log.close()
    metrics: dict[str, dict[str, Any]] = {}
    for name, (p50, p95) in timed.items():
        baseline = None if name == "healthz" else "console_healthz_p50_ms"
        metrics[f"console_{name}_p50_ms"] = {"value": round(p50, 1), "unit": "ms", "baseline": baseline}
        metrics[f"console_{name}_p95_ms"] = {"value": round(p95, 1), "unit": "ms",
                                             "baseline": None if name == "healthz" else "console_healthz_p95_ms"}
    metrics["console_seed_seconds"] = {"value": round(seed_seconds, 1), "unit": "s", "baseline": None}
    return metrics

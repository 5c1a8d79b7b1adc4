"""`make bench`: run every benchmark against the local stack and write var/bench/results.json.

Each `bench/bench_<area>.py` exposes `run(ctx) -> {NAME: {"value", "unit", "baseline"}}`; this runner adds
the raw baselines (plain confluent-kafka produce/consume and a PostgreSQL COPY of the same rows), computes
ratios against the baselines measured in the same run, and prints a table. Figures, never assertions.
Run one area only with `python -m bench.run materialize quota`.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "var" / "bench"

from shared.adapters.postgres.engine import make_engine  # noqa: E402
from shared.adapters.postgres.migrate import drop_schema, upgrade  # noqa: E402
from shared.config import Settings  # noqa: E402

Metrics = dict[str, dict[str, Any]]


@dataclass
class BenchContext:
    settings: Settings
    engine: sa.Engine
    endpoints: dict[str, str]

    def fresh(self, name: str, partitions: int = 6) -> BenchContext:
        """A new schema and topic prefix, so one benchmark's data never skews another's."""
        return _context(self.endpoints, name, partitions)


def _endpoints() -> dict[str, str]:
    if os.environ.get("BILLING_KAFKA_BOOTSTRAP") and os.environ.get("BILLING_DATABASE_URL"):
        return {k: os.environ[k] for k in ("BILLING_KAFKA_BOOTSTRAP", "BILLING_DATABASE_URL")} | {
            "BILLING_STRIPE_API_BASE": os.environ.get("BILLING_STRIPE_API_BASE", "http://127.0.0.1:12111")}
    out = subprocess.run([sys.executable, str(REPO / "deploy" / "stack.py"), "up", "--json"],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"local stack failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


_SCHEMAS: list[tuple[str, str]] = []
_TOPIC_PREFIXES: list[tuple[str, str]] = []


def _context(endpoints: dict[str, str], name: str, partitions: int = 6) -> BenchContext:
    from shared.adapters.kafka.admin import create_topics

    schema = f"bench_{name}_{uuid.uuid4().hex[:6]}"
    upgrade(endpoints["BILLING_DATABASE_URL"], schema)
    _SCHEMAS.append((endpoints["BILLING_DATABASE_URL"], schema))
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    create_topics(endpoints["BILLING_KAFKA_BOOTSTRAP"], prefix=prefix, partitions=partitions)
    _TOPIC_PREFIXES.append((endpoints["BILLING_KAFKA_BOOTSTRAP"], prefix))
    settings = Settings(kafka_bootstrap=endpoints["BILLING_KAFKA_BOOTSTRAP"],
                        database_url=endpoints["BILLING_DATABASE_URL"], database_schema=schema,
                        topic_prefix=prefix, stripe_api_base=endpoints["BILLING_STRIPE_API_BASE"],
                        consumer_group=f"bench-{uuid.uuid4().hex[:6]}", log_json=False, log_level="WARNING")
    return BenchContext(settings, make_engine(settings), endpoints)


# ----------------------------------------------------------------------------- raw baselines

RAW_EVENTS = 200_000


def usage_event_bytes(i: int) -> bytes:
    """A ~200-byte JSON usage event, the unit every throughput figure here is measured in."""
    body = orjson.dumps({
        "transaction_id": f"tx-{i:012d}", "customer_id": f"cus_{i % 5000:06d}", "event_type": "inference",
        "timestamp": "2026-01-15T12:00:00+00:00", "properties": {"model": "llama-3-8b", "cost_usd_micros": 1200},
    })
    return body + b" " * max(0, 200 - len(body))


def raw_kafka(ctx: BenchContext) -> Metrics:
    from confluent_kafka import Consumer, Producer

    topic = ctx.settings.topic("usage.v1")
    payloads = [usage_event_bytes(i) for i in range(RAW_EVENTS)]
    producer = Producer({"bootstrap.servers": ctx.settings.kafka_bootstrap, "acks": "all",
                         "enable.idempotence": True, "linger.ms": 5, "batch.size": 262144,
                         "compression.type": "lz4"})
    started = time.perf_counter()
    for i, value in enumerate(payloads):
        while True:
            try:
                producer.produce(topic, key=f"sub_{i % 5000}".encode(), value=value)
                break
            except BufferError:
                producer.poll(0.01)
        if i % 10000 == 0:
            producer.poll(0)
    producer.flush(60)
    produce_rate = RAW_EVENTS / (time.perf_counter() - started)

    consumer = Consumer({"bootstrap.servers": ctx.settings.kafka_bootstrap, "group.id": f"raw-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    seen = 0
    started = None
    deadline = time.monotonic() + 120
    while seen < RAW_EVENTS and time.monotonic() < deadline:
        batch = consumer.consume(10000, 1.0)
        if batch and started is None:
            started = time.perf_counter()
        seen += sum(1 for m in batch if m.error() is None)
    consume_rate = seen / (time.perf_counter() - (started or time.perf_counter()))
    consumer.close()
    return {
        "raw_produce_events_per_s": {"value": round(produce_rate), "unit": "events/s", "baseline": None},
        "raw_consume_events_per_s": {"value": round(consume_rate), "unit": "events/s", "baseline": None},
    }


def raw_pg_copy(ctx: BenchContext) -> Metrics:
    rows = [(f"tx-{i:012d}", f"cus_{i % 5000:06d}", "inference", datetime(2026, 1, 15, 12, tzinfo=UTC),
             usage_event_bytes(i).decode().strip()) for i in range(RAW_EVENTS)]
    raw = ctx.engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("CREATE TABLE raw_copy_bench (transaction_id text, customer_id text, event_type text, "
                    "ts timestamptz, body jsonb)")
        raw.commit()
        started = time.perf_counter()
        with cur.copy("COPY raw_copy_bench FROM STDIN") as copy:  # type: ignore[attr-defined]
            for row in rows:
                copy.write_row(row)
        raw.commit()
        rate = RAW_EVENTS / (time.perf_counter() - started)
    finally:
        raw.close()
    return {"raw_pg_copy_rows_per_s": {"value": round(rate), "unit": "rows/s", "baseline": None}}


# ----------------------------------------------------------------------------- runner


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except OSError:
        mem_kb = 0
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "mem_gb": round(mem_kb / 1024 / 1024, 1),
            "python": platform.python_version(), "platform": platform.platform()}


def discover(only: list[str]) -> list[str]:
    names = sorted(p.stem for p in (REPO / "bench").glob("bench_*.py"))
    return [n for n in names if not only or n.removeprefix("bench_") in only or n in only]


RAW_METRICS = ("raw_produce_events_per_s", "raw_consume_events_per_s", "raw_pg_copy_rows_per_s")


def failed_metrics(names: tuple[str, ...] | list[str], error: str) -> Metrics:
    """The rows of a benchmark that failed: no value, `failed` set, the error's last line."""
    reason = (error.strip().splitlines() or ["failed"])[-1][:300]
    return {name: {"value": None, "unit": "", "baseline": None, "failed": True, "error": reason} for name in names}


def measure(name: str, area: Any, ctx: Any, metrics: Metrics, errors: dict[str, str]) -> None:
    """Run one area (`area(ctx)` -> metrics) into `metrics`; a failure is recorded, never raised, so the other
    areas still run: its metrics (the module's METRICS, else one row named after the area) are marked failed."""
    try:
        metrics |= area(ctx)
    except Exception:
        errors[name] = traceback.format_exc()
        print(f"[bench] {name} FAILED:\n{errors[name]}", file=sys.stderr, flush=True)
        names = getattr(area, "metrics", None) or [name]
        metrics |= {k: v for k, v in failed_metrics(names, errors[name]).items() if k not in metrics}


def _area(name: str) -> Any:
    """`bench.<name>.run`, carrying the module's METRICS (what it reports) when it declares them."""
    try:
        module = importlib.import_module(f"bench.{name}")
    except Exception as error:  # an area that cannot even be imported fails alone, like one that raises
        def broken(ctx: Any, error: Exception = error) -> Metrics:
            raise error
        return broken

    def area(ctx: Any) -> Metrics:
        return dict(module.run(ctx))
    area.metrics = list(getattr(module, "METRICS", ()))  # type: ignore[attr-defined]
    return area


def raw(ctx: BenchContext) -> Metrics:
    return raw_kafka(ctx) | raw_pg_copy(ctx)


raw.metrics = list(RAW_METRICS)  # type: ignore[attr-defined]


def main(argv: list[str]) -> int:
    only = argv[1:]
    # Every output folder exists before any benchmark opens a file in it (a fresh clone has no var/).
    OUT.mkdir(parents=True, exist_ok=True)
    endpoints = _endpoints()
    metrics: Metrics = {}
    errors: dict[str, str] = {}
    try:
        areas: list[tuple[str, Any]] = [("raw", raw)] if not only or "raw" in only else []
        areas += [(name, _area(name)) for name in discover(only)]
        for name, area in areas:
            print(f"[bench] {name} ...", flush=True)
            try:
                ctx = _context(endpoints, name.removeprefix("bench_"))
            except Exception:
                measure(name, _raising(traceback.format_exc()), None, metrics, errors)
                continue
            try:
                measure(name, area, ctx, metrics, errors)
            finally:
                ctx.engine.dispose()
    finally:
        from shared.adapters.kafka.admin import delete_topics

        # Best effort, each on its own: a failed clean-up must neither skip the others nor hide the run's
        # own exception.
        cleanups = [(drop_schema, url, schema) for url, schema in _SCHEMAS]
        cleanups += [(delete_topics, bootstrap, prefix) for bootstrap, prefix in _TOPIC_PREFIXES]
        for cleanup, where, name in cleanups:
            try:
                cleanup(where, name)
            except Exception as exc:
                print(f"[bench] clean-up {cleanup.__name__}({name!r}) failed: {exc}", file=sys.stderr, flush=True)

    return report(metrics, errors, OUT, merge=bool(only))


def _raising(error: str) -> Any:
    def area(ctx: Any) -> Metrics:
        raise RuntimeError(error.strip().splitlines()[-1] if error.strip() else "failed")
    return area


def report(metrics: Metrics, errors: dict[str, str], out: Path, *, merge: bool = False) -> int:
    """Ratios, `out`/results.json and the table; 1 when any benchmark failed (its rows say FAILED), else 0."""
    for m in metrics.values():
        base = metrics.get(m.get("baseline") or "")
        m["ratio"] = round(m["value"] / base["value"], 3) if (
            base and base.get("value") and m.get("value") is not None) else None
    out.mkdir(parents=True, exist_ok=True)
    previous = json.loads((out / "results.json").read_text()) if merge and (out / "results.json").exists() else {}
    merged = {**previous.get("metrics", {}), **metrics}
    result = {"metrics": merged, "machine": machine(), "at": datetime.now(UTC).isoformat(), "errors": errors,
              "failed": sorted(errors)}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    width = max((len(k) for k in merged), default=10)
    print(f"\n{'metric':{width}}  {'value':>14}  unit          baseline / ratio")
    for name, m in merged.items():
        if m.get("failed"):
            print(f"{name:{width}}  {'FAILED':>14}  {'':12}  {m.get('error', '')}")
            continue
        ratio = f"{m.get('baseline')} x{m['ratio']}" if m.get("ratio") is not None else ""
        print(f"{name:{width}}  {m['value']:>14,}  {m['unit']:12}  {ratio}")
    print(f"\nwritten to {out / 'results.json'}")
    if errors:
        print(f"[bench] FAILED: {', '.join(sorted(errors))}", file=sys.stderr, flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

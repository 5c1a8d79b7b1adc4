"""Ingest benchmarks: HTTP edge throughput, SDK-to-Kafka throughput, and usage visibility latency.

- `ingest_http_events_per_s`: batches of 1000 events POSTed to the edge (`python -m services.ingest`
  with BENCH_INGEST_HTTP_WORKERS uvicorn processes, default 2 = one per core here, a subprocess) by a load
  generator in its own process (asyncio with a minimal keep-alive HTTP/1.1 client, BENCH_INGEST_IN_FLIGHT
  requests in flight, default 16: each batch waits about 100 ms for Kafka's acknowledgement, so 8 per edge
  process keep both busy), sustained for
  BENCH_INGEST_SECONDS (default 20) after a warm-up; counted are the events the edge answered
  `accepted`, i.e. acknowledged by Kafka (acks=all). The load generator reports the CPU it used
  (`loadgen_cpu_share`, of one core), to show it is not the bottleneck.
- `ingest_sdk_events_per_s`: the SDK's `KafkaUsageProducer.emit_many` (validation, envelope, idempotent
  producer) in lists of 1000, straight to Kafka, until `close()` saw every acknowledgement;
  `ingest_sdk_emit_events_per_s` the same with one `emit()` call per event.
- `ingest_pipeline_events_per_s`: with the real billing worker (`python -m services.billing_worker`)
  consuming, the edge is saturated for 15 s and the usage events the worker stores per second are counted:
  the load the whole pipeline sustains on this machine (the worker, sharing the cores with the edge, is
  the slower stage). The backlog is then drained.
- `usage_visible_p99_ms`: with background load at half the pipeline's sustained rate, a probe event is
  POSTed every so often and `GET /v1/subscriptions/{id}/usage` is polled (every 5 ms) until the probe's
  usage shows: the time from the edge's acknowledgement to visibility, p50 and p99 over
  BENCH_INGEST_PROBES probes (default 200, at most 240 s of probing). BENCH_INGEST_VISIBLE_RATE sets
  another background rate. A probe invisible after 30 s stops the run (`usage_visible_timeouts` 1, p99 =
  30 s): the worker is not keeping up with that load.

Baselines: `raw_produce_events_per_s` (bench/run.py: plain confluent-kafka, same event size).
The customers and subscriptions are seeded as onboarding and the worker's subscribe leave them.
Run the load generator alone with `python -m bench.bench_ingest <mode> '<json args>'`.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
METRICS = ("ingest_http_events_per_s", "ingest_http_batch_p99_ms", "ingest_sdk_events_per_s",
           "ingest_sdk_emit_events_per_s", "ingest_http_loadgen_cpu_share", "usage_visible_p50_ms",
           "usage_visible_p99_ms", "usage_visible_offered_events_per_s", "ingest_pipeline_events_per_s",
           "usage_visible_timeouts")
ADMIN_KEY = "bench-ingest-admin-key"
EDGE_START_TIMEOUT_S = float(os.environ.get("BENCH_EDGE_START_TIMEOUT_S", "240"))
BATCH = 1000
CUSTOMERS = 1000
SECONDS = float(os.environ.get("BENCH_INGEST_SECONDS", "20"))
WARMUP_SECONDS = 3.0
IN_FLIGHT = int(os.environ.get("BENCH_INGEST_IN_FLIGHT", "16"))
HTTP_WORKERS = int(os.environ.get("BENCH_INGEST_HTTP_WORKERS", "2"))
PROBES = int(os.environ.get("BENCH_INGEST_PROBES", "200"))
VISIBLE_RATE = float(os.environ.get("BENCH_INGEST_VISIBLE_RATE", "0"))  # events/s; 0: half the HTTP rate
SDK_EVENTS = int(os.environ.get("BENCH_INGEST_SDK_EVENTS", "200000"))
PROBE_CUSTOMER, PROBE_SUBSCRIPTION = "cust_bench_probe", "sub_bench_probe"


# ------------------------------------------------------------------------------------ load generator


def _customer(i: int) -> str:
    return f"cust_bench_{i:05d}"


class Bodies:
    """Request bodies of `count` inference events (~190 bytes each): unique transaction ids, timestamped a
    minute ago, random customers and costs. The random part of each event is drawn once up front, so the
    load generator spends its CPU on HTTP, not on making JSON."""

    def __init__(self, run: str, rng: random.Random, variety: int = 4096) -> None:
        self.run = run
        self.tails = ['","customer_id":"' + _customer(rng.randrange(CUSTOMERS)) + '","event_type":"inference",'
                      '"timestamp":"@AT@","properties":{"cost_usd_micros":' + str(rng.randint(1, 9999)) +
                      ',"model":"llama-3-8b"}}' for _ in range(variety)]
        self.rng = rng

    def body(self, start: int, count: int) -> bytes:
        at = (datetime.now(UTC) - timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
        tails = self.rng.sample(self.tails, min(count, len(self.tails)))
        events = ",".join(f'{{"transaction_id":"{self.run}-{start + n}{tails[n % len(tails)]}' for n in range(count))
        return f"[{events}]".replace("@AT@", at).encode()


def _headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"}


class KeepAliveConnection:
    """A minimal HTTP/1.1 client on one keep-alive connection, for the saturating load generator only.

    # NOTE: httpx parses responses in pure Python (h11) and cost the load generator about 4 ms of CPU per
    # 1000-event request, a seventh of this 2-core machine at 50k events/s: CPU taken from the edge being
    # measured. This sends a POST and reads a Content-Length framed answer (all the edge sends), nothing more.
    """

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        parsed = httpx.URL(url)
        self._host, self._port = parsed.host, parsed.port or 80
        self._head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"{self._host}:{self._port}", **headers}.items())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        self._writer.write(f"POST {path} HTTP/1.1\r\n{self._head}Content-Length: {len(body)}\r\n\r\n".encode())
        self._writer.write(body)
        await self._writer.drain()
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next(int(line.split(b":", 1)[1]) for line in lines[1:] if line.lower().startswith(b"content-length:"))
        return status, await self._reader.readexactly(length)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            await self._writer.wait_closed()


async def saturate(url: str, seconds: float, warmup: float, in_flight: int) -> dict[str, Any]:
    """Keep `in_flight` batch requests outstanding (one keep-alive connection each); count accepted events
    after the warm-up."""
    bodies = Bodies(uuid.uuid4().hex[:8], random.Random(1))
    counter = [0]
    cpu_started = time.process_time()
    started = time.perf_counter()
    measure_from, measure_to = started + warmup, started + warmup + seconds
    accepted, requests, failures, latencies, total = [0], [0], [0], [], [0]

    async def worker() -> None:
        http = KeepAliveConnection(url, _headers())
        try:
            while time.perf_counter() < measure_to:
                counter[0] += BATCH
                body = bodies.body(counter[0], BATCH)
                sent = time.perf_counter()
                status, answer = await http.post("/v1/ingest", body)
                done = time.perf_counter()
                if status != 200:
                    failures[0] += 1
                    continue
                answered = orjson.loads(answer)["accepted"]
                total[0] += answered
                if measure_from <= done <= measure_to:
                    accepted[0] += answered
                    requests[0] += 1
                    latencies.append(done - sent)
        finally:
            await http.close()

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    cpu_share = (time.process_time() - cpu_started) / (time.perf_counter() - started)
    latencies.sort()
    return {"accepted": accepted[0], "seconds": seconds, "requests": requests[0], "failures": failures[0],
            "accepted_with_warmup": total[0], "loadgen_cpu_share": round(cpu_share, 3),
            "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
            "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else None}


async def _probe_quantity(http: httpx.AsyncClient) -> int:
    body = (await http.get(f"/v1/subscriptions/{PROBE_SUBSCRIPTION}/usage")).json()
    return sum(int(m["quantity"]) for m in body["meters"] if m["meter_id"] == "inference")


async def visibility(url: str, rate: float, probes: int, timeout: float = 30.0,
                     max_seconds: float = 240.0) -> dict[str, Any]:
    """Background load at `rate` events/s; probes measure acknowledgement -> visible through the read API.
    A probe still invisible after `timeout` s ends the run (the pipeline is not keeping up with the load;
    later probes would only queue behind it): it counts as `timeout` s, and `timeouts` says so."""
    bodies = Bodies(uuid.uuid4().hex[:8], random.Random(2))
    run = bodies.run
    stop = asyncio.Event()
    sent_events = [0]
    load_started = time.perf_counter()

    async def load(http: httpx.AsyncClient) -> None:
        interval = BATCH / rate
        next_at = time.perf_counter()
        outstanding: set[asyncio.Task[Any]] = set()
        n = 0
        while not stop.is_set():
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            if len(outstanding) >= 16:  # the edge is not keeping up: do not pile up requests
                continue
            n += BATCH
            task = asyncio.create_task(http.post("/v1/ingest", content=bodies.body(n, BATCH)))
            sent_events[0] += BATCH
            outstanding.add(task)
            task.add_done_callback(outstanding.discard)
        await asyncio.gather(*outstanding, return_exceptions=True)

    latencies: list[float] = []
    timeouts = 0
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(base_url=url, headers=_headers(), timeout=60, limits=limits) as http:
        loader = asyncio.create_task(load(http))
        expected = await _probe_quantity(http)
        await asyncio.sleep(2.0)  # the load reaches its pace first
        for n in range(probes):
            at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            event = {"transaction_id": f"probe-{run}-{n}", "customer_id": PROBE_CUSTOMER, "event_type": "inference",
                     "timestamp": at, "properties": {"cost_usd_micros": 1}}
            response = await http.post("/v1/ingest", content=orjson.dumps([event]))
            acknowledged = time.perf_counter()
            if response.json()["accepted"] != 1:
                raise RuntimeError(f"probe refused: {response.text}")
            expected += 1
            while await _probe_quantity(http) < expected and time.perf_counter() - acknowledged <= timeout:
                await asyncio.sleep(0.005)
            latencies.append(min(time.perf_counter() - acknowledged, timeout))
            if latencies[-1] >= timeout:
                timeouts += 1
                break
            if time.perf_counter() - load_started > max_seconds:  # a slow pipeline must not hold the run for hours
                break
            await asyncio.sleep(0.05)
        stop.set()
        await loader
    elapsed = time.perf_counter() - load_started
    latencies.sort()
    return {"probes": len(latencies), "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            "max_ms": 1000 * latencies[-1], "timeouts": timeouts, "offered_events_per_s": sent_events[0] / elapsed}


def main(argv: list[str]) -> None:
    mode, args = argv[1], json.loads(argv[2])
    result = asyncio.run(saturate(**args) if mode == "saturate" else visibility(**args))
    print(json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------ orchestration


def _seed(engine: sa.Engine) -> None:
    from shared.adapters.postgres.schema.billing import subscriptions
    from shared.adapters.postgres.schema.core import customers

    now = datetime.now(UTC)
    ids = [(_customer(i), f"sub_bench_{i:05d}") for i in range(CUSTOMERS)] + [(PROBE_CUSTOMER, PROBE_SUBSCRIPTION)]
    with engine.begin() as conn:
        conn.execute(customers.insert(), [{"customer_id": c, "external_id": c, "kind": "org", "name": c,
                                           "email": f"{c}@bench.test", "currency": "USD"} for c, _ in ids])
        conn.execute(subscriptions.insert(), [{
            "subscription_id": s, "customer_id": c, "plan_id": "pro", "status": "active", "seats": 1,
            "currency": "USD", "anchor_day": (now - timedelta(days=1)).day, "started_at": now - timedelta(days=1),
            "current_period_start": now - timedelta(days=1), "current_period_end": now + timedelta(days=29)}
            for c, s in ids])


def _env(settings: Any, **extra: str) -> dict[str, str]:
    return {**os.environ, **settings.to_env(), **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_edge(settings: Any) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "services.ingest"], cwd=REPO, stdout=subprocess.DEVNULL,
                            env=_env(settings, BILLING_HTTP_PORT=str(port), BILLING_ADMIN_API_KEY=ADMIN_KEY,
                                     BILLING_LOG_LEVEL="WARNING", BILLING_HTTP_WORKERS=str(HTTP_WORKERS)))
    url = f"http://127.0.0.1:{port}"
    # A bound on a wait, not a figure: on a loaded 2-core machine (a worker starting beside it) the edge's
    # processes took over 60 s to answer in a fresh-clone `make bench`.
    deadline = time.monotonic() + EDGE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the edge exited at start")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    _stop(proc)  # never left behind, answering or not
    raise RuntimeError(f"the edge did not answer within {EDGE_START_TIMEOUT_S:.0f} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _loadgen(mode: str, **args: Any) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "bench.bench_ingest", mode, json.dumps(args)], cwd=REPO,
                         capture_output=True, text=True, check=False, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _sdk_rate(settings: Any, *, one_by_one: bool) -> float:
    from shared.sdk.client import KafkaUsageProducer

    rng = random.Random(3)
    at = datetime.now(UTC) - timedelta(minutes=1)
    events: list[dict[str, Any]] = [
        {"transaction_id": f"sdk-{n}", "customer_id": _customer(n % CUSTOMERS), "event_type": "inference",
         "timestamp": at, "properties": {"cost_usd_micros": rng.randint(1, 9999), "model": "llama-3-8b"}}
        for n in range(SDK_EVENTS)]
    subscription_of = {_customer(n): f"sub_bench_{n:05d}" for n in range(CUSTOMERS)}
    # NOTE: the input (200,000 events, ~1M objects, built up front) is a fixture of this benchmark, not
    # something a producer holds; frozen, the garbage collector's full collections stop walking it, so the
    # figure is the SDK's cost, not the cost of scanning the fixture (about 20 % of the run otherwise).
    gc.collect()
    gc.freeze()
    producer = KafkaUsageProducer(settings, producer_name="bench-sdk")
    try:
        started = time.perf_counter()
        if one_by_one:
            for event in events:
                producer.emit(event, subscription_id=subscription_of[event["customer_id"]], now=at)
        else:
            for start in range(0, SDK_EVENTS, BATCH):
                producer.emit_many(events[start:start + BATCH], subscription_of=subscription_of, now=at)
        producer.close(120)
        elapsed = time.perf_counter() - started
    finally:
        gc.unfreeze()
    if producer.delivered != SDK_EVENTS:
        raise RuntimeError(f"the SDK delivered {producer.delivered} of {SDK_EVENTS}")
    return SDK_EVENTS / elapsed


def _stored_usage(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM usage_events")).scalar_one())


def _pipeline_rate(engine: sa.Engine, url: str) -> float:
    """The load the whole pipeline sustains: usage events stored per second by the worker while the edge is
    saturated (on this machine the worker, not the edge, is the slower stage). Waits until the backlog the
    flood left is stored, so the visibility run starts from an idle pipeline."""
    seconds = 15.0
    flood = subprocess.Popen([sys.executable, "-m", "bench.bench_ingest", "saturate", json.dumps(
        {"url": url, "seconds": seconds, "warmup": WARMUP_SECONDS, "in_flight": IN_FLIGHT})],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    time.sleep(WARMUP_SECONDS + 2)
    first, first_at = _stored_usage(engine), time.perf_counter()
    time.sleep(seconds - 4)
    last, last_at = _stored_usage(engine), time.perf_counter()
    out, _ = flood.communicate(timeout=120)
    sent = json.loads(out.strip().splitlines()[-1])["accepted_with_warmup"]
    deadline = time.monotonic() + 600
    while _stored_usage(engine) < sent:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the worker stored {_stored_usage(engine)} of {sent} events in 10 minutes")
        time.sleep(1)
    return (last - first) / (last_at - first_at)


def run(ctx: Any) -> dict[str, dict[str, Any]]:
    from shared.adapters.kafka.admin import create_topics

    settings = ctx.settings
    _seed(ctx.engine)

    edge, url = _start_edge(settings)
    try:
        saturated = _loadgen("saturate", url=url, seconds=SECONDS, warmup=WARMUP_SECONDS, in_flight=IN_FLIGHT)
    finally:
        _stop(edge)
    http_rate = saturated["accepted"] / saturated["seconds"]
    print(f"[bench] ingest over HTTP: {saturated}", flush=True)

    sdk_rate = _sdk_rate(settings, one_by_one=False)
    sdk_emit_rate = _sdk_rate(settings, one_by_one=True)
    print(f"[bench] SDK straight to Kafka: emit_many {sdk_rate:.0f}/s, emit {sdk_emit_rate:.0f}/s", flush=True)

    # The visibility run gets topics of its own, so the worker does not first chew through the backlog.
    prefix = f"{settings.topic_prefix}vis."
    create_topics(settings.kafka_bootstrap, prefix=prefix, partitions=6)
    live = settings.model_copy(update={"topic_prefix": prefix, "consumer_group": f"{settings.consumer_group}-vis"})
    worker = subprocess.Popen([sys.executable, "-m", "services.billing_worker", "--no-relay"], cwd=REPO,
                              env=_env(live), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        edge, url = _start_edge(live)
    except BaseException:
        _stop(worker)  # the worker started above must not outlive a failed edge start
        raise
    try:
        pipeline_rate = _pipeline_rate(ctx.engine, url)
        print(f"[bench] pipeline (edge + worker) sustains {pipeline_rate:.0f} events/s", flush=True)
        seen = _loadgen("visibility", url=url, rate=VISIBLE_RATE or pipeline_rate / 2, probes=PROBES)
    finally:
        _stop(edge)
        _stop(worker)
    print(f"[bench] usage visibility at half load: {seen}", flush=True)

    return {
        "ingest_http_events_per_s": {"value": round(http_rate), "unit": "events/s",
                                     "baseline": "raw_produce_events_per_s"},
        "ingest_http_batch_p99_ms": {"value": round(saturated["p99_ms"] or 0, 1), "unit": "ms", "baseline": None},
        "ingest_sdk_events_per_s": {"value": round(sdk_rate), "unit": "events/s",
                                    "baseline": "raw_produce_events_per_s"},
        "ingest_sdk_emit_events_per_s": {"value": round(sdk_emit_rate), "unit": "events/s",
                                         "baseline": "raw_produce_events_per_s"},
        "ingest_http_loadgen_cpu_share": {"value": saturated["loadgen_cpu_share"], "unit": "cores",
                                          "baseline": None},
        "usage_visible_p50_ms": {"value": round(seen["p50_ms"], 1), "unit": "ms", "baseline": None},
        "usage_visible_p99_ms": {"value": round(seen["p99_ms"], 1), "unit": "ms", "baseline": None},
        "usage_visible_offered_events_per_s": {"value": round(seen["offered_events_per_s"]), "unit": "events/s",
                                               "baseline": "ingest_pipeline_events_per_s"},
        "ingest_pipeline_events_per_s": {"value": round(pipeline_rate), "unit": "events/s",
                                         "baseline": "ingest_http_events_per_s"},
        "usage_visible_timeouts": {"value": seen["timeouts"], "unit": "probes", "baseline": None},
    }


if __name__ == "__main__":
    main(sys.argv)

"""`python -m chaos.openapi_fuzz`: schemathesis `--checks all` against a real uvicorn edge; exit 1 on any failure.

The edge runs as `python -m services.ingest` (uvicorn, a process of its own) on the stack named by the
`BILLING_*` environment (the defaults are the shared local stack), on a fresh PostgreSQL schema and a fresh
topic prefix that are removed afterwards, with a simulated clock and a known admin key. Two passes of the
schemathesis CLI, each with every check and at least 100 examples per operation:

1. generated path parameters (mostly unknown ids: 404s, validation);
2. the ids of a seeded customer and subscription (`--set-path`), so the handlers run on data that exists.

It prints one summary line per pass and per failing operation; the CLI's own report (with a curl command
reproducing each failure) is above it.

    python -m chaos.openapi_fuzz                     100 examples per operation, both passes
    OPENAPI_FUZZ_EXAMPLES=300 python -m chaos.openapi_fuzz
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from pydantic import SecretStr

from shared.adapters.kafka.admin import create_topics, delete_topics
from shared.adapters.postgres.engine import make_engine
from shared.adapters.postgres.migrate import drop_schema, upgrade
from shared.adapters.postgres.schema.billing import subscriptions
from shared.adapters.postgres.schema.core import customers
from shared.config import REPO_ROOT, Settings

ADMIN_KEY = f"fuzz-admin-{uuid.uuid4().hex}"
CLOCK_START = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
SEEDED = {"customer_id": "cust_fuzz_seeded", "org_id": "cust_fuzz_seeded", "subscription_id": "sub_fuzz_seeded"}
MIN_EXAMPLES = 100


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def fresh_environment(base: Settings) -> Iterator[Settings]:
    """A migrated schema and created topics of this run's own, removed afterwards."""
    run = uuid.uuid4().hex[:10]
    schema, prefix = f"fuzz_{run}", f"fuzz-{run}."
    upgrade(base.database_url, schema)
    create_topics(base.kafka_bootstrap, prefix=prefix, partitions=3)
    settings = base.model_copy(update={
        "database_schema": schema, "topic_prefix": prefix, "admin_api_key": SecretStr(ADMIN_KEY),
        "clock": "simulated", "simulated_clock_start": CLOCK_START.isoformat(), "command_wait_seconds": 0.2,
        "database_pool_size": 5, "log_level": "WARNING"})
    try:
        _seed(settings)
        yield settings
    finally:
        delete_topics(base.kafka_bootstrap, prefix)
        drop_schema(base.database_url, schema)


def _seed(settings: Settings) -> None:
    engine = make_engine(settings)
    try:
        with engine.begin() as conn:
            conn.execute(customers.insert().values(
                customer_id=SEEDED["customer_id"], external_id="fuzz-seeded", kind="org", name="Fuzz",
                email="fuzz@example.test", currency="USD"))
            conn.execute(subscriptions.insert().values(
                subscription_id=SEEDED["subscription_id"], customer_id=SEEDED["customer_id"], plan_id="pro",
                status="active", seats=1, currency="USD", anchor_day=CLOCK_START.day, started_at=CLOCK_START,
                current_period_start=CLOCK_START, current_period_end=CLOCK_START + timedelta(days=31)))
    finally:
        engine.dispose()


@contextmanager
def edge_server(settings: Settings, log_path: Path) -> Iterator[str]:
    """`python -m services.ingest` on a free port; its base URL once /healthz answers; SIGTERM afterwards."""
    port = _free_port()
    env = {**os.environ, **settings.to_env(), "BILLING_HTTP_HOST": "127.0.0.1", "BILLING_HTTP_PORT": str(port)}
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "services.ingest"], cwd=REPO_ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the edge did not start; see {log_path}")
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            yield url
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass(frozen=True)
class PassResult:
    name: str
    exit_code: int
    operations: int
    failed: list[str]


def run_pass(name: str, url: str, examples: int, junit: Path, extra: list[str]) -> PassResult:
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json", "--checks", "all",
        "--experimental", "openapi-3.1", "--hypothesis-max-examples", str(examples),
        "--hypothesis-suppress-health-check", "all", "--hypothesis-deadline", "None",
        "--request-timeout", "30000", "--header", f"Authorization: Bearer {ADMIN_KEY}",
        # The key is sent as given; generated API-key headers with bytes HTTP forbids would be refused by
        # uvicorn's parser (400 "Invalid HTTP request") before the edge sees them.
        "--generation-with-security-parameters", "false",
        "--junit-xml", str(junit), "--no-color", *extra]
    print(f"\n=== pass {name}: schemathesis --checks all, {examples} examples per operation", flush=True)
    code = subprocess.call(command, cwd=REPO_ROOT)
    operations, failed = 0, []
    if junit.exists():
        for case in ElementTree.parse(junit).getroot().iter("testcase"):  # noqa: S314 (written by schemathesis)
            operations += 1
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(case.get("name", "?"))
    return PassResult(name, code, operations, failed)


def main() -> int:
    examples = int(os.environ.get("OPENAPI_FUZZ_EXAMPLES", str(MIN_EXAMPLES)))
    base = Settings()
    results: list[PassResult] = []
    with tempfile.TemporaryDirectory(prefix="openapi-fuzz-") as tmp, fresh_environment(base) as settings, \
            edge_server(settings, Path(tmp) / "edge.log") as url:
        seeded = [arg for key, value in SEEDED.items() for arg in ("--set-path", f"{key}={value}")]
        results.append(run_pass("generated ids", url, examples, Path(tmp) / "generated.xml", []))
        results.append(run_pass("seeded ids", url, examples, Path(tmp) / "seeded.xml", seeded))
        edge_log = (Path(tmp) / "edge.log").read_text(errors="replace")
    print("\n=== OpenAPI fuzz summary (schemathesis --checks all against a uvicorn edge)")
    print(f"{'pass':<16}{'operations':>11}{'examples/op':>13}{'failed ops':>12}{'exit':>6}")
    for result in results:
        print(f"{result.name:<16}{result.operations:>11}{examples:>13}{len(result.failed):>12}{result.exit_code:>6}")
        for operation in result.failed:
            print(f"  FAILED {operation}")
    server_errors = edge_log.count("unhandled error")
    print(f"unhandled errors logged by the edge: {server_errors}")
    ok = all(r.exit_code == 0 and not r.failed and r.operations > 0 for r in results) and server_errors == 0
    print("result:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

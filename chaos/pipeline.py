"""The system under test: a fresh schema and topic prefix, and the three services as real processes.

The services are started exactly as an operator would (`python -m services.cli ingest|worker|dunning`,
via services/demo/processes.py), configured only through BILLING_* variables. The billing clock is
simulated (from 2026-01-01) so a billing run can be triggered at will, and payments go through the
simulated gateway, whose own books in PostgreSQL let the audit count the charges it really made.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import sqlalchemy as sa
from pydantic import SecretStr

from services.demo.processes import Quiescence, ServiceProcess, free_port, wait_http_ready
from shared.adapters.kafka.admin import create_topics
from shared.adapters.postgres.engine import make_engine
from shared.adapters.postgres.migrate import upgrade
from shared.config import Settings

CLOCK_START = datetime(2026, 1, 1, tzinfo=UTC)
ADMIN_KEY = "chaos-admin-" + uuid.uuid4().hex
SERVICES = ("ingest", "worker", "dunning")


def with_chaos_options(base: Settings, run_id: str) -> Settings:
    """`base` (endpoints, schema, topic prefix) with what every chaos run gives its services."""
    return base.model_copy(update={
        "consumer_group": f"billing-worker-{run_id}",
        "clock": "simulated",
        "simulated_clock_start": CLOCK_START.isoformat(),
        "payment_gateway": "simulated",
        "admin_api_key": SecretStr(ADMIN_KEY),
        "http_port": free_port(),
        "log_level": "INFO",
        "log_json": True,
        "scheduler_interval_s": 0.5,
        # Small batches, so a kill -9 lands between commits of one billing run, not after it.
        "worker_batch_max": 200,
        # Static membership: a restarted worker takes its partitions back at once, without a rebalance.
        "worker_member_id": f"chaos-worker-{run_id}",
        "worker_session_timeout_ms": 10000,
    })


def prepare(endpoints: dict[str, str], run_id: str, partitions: int = 6) -> Settings:
    """A private schema (migrated) and topic prefix (created) for this run, and the services' settings."""
    schema, prefix = f"chaos_{run_id}", f"chaos{run_id}."
    upgrade(endpoints["BILLING_DATABASE_URL"], schema)
    create_topics(endpoints["BILLING_KAFKA_BOOTSTRAP"], prefix=prefix, partitions=partitions)
    base = Settings(kafka_bootstrap=endpoints["BILLING_KAFKA_BOOTSTRAP"],
                    database_url=endpoints["BILLING_DATABASE_URL"],
                    stripe_api_base=endpoints["BILLING_STRIPE_API_BASE"], database_schema=schema,
                    topic_prefix=prefix)
    return with_chaos_options(base, run_id)


@dataclass
class Pipeline:
    """The services run with exactly `settings` (rendered as BILLING_* variables)."""

    settings: Settings
    log_dir: Path
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    worker_kills: int = 0

    def __post_init__(self) -> None:
        env = self.settings.to_env()
        self.services = {name: ServiceProcess(name, [name], env, self.log_dir / f"{name}.log")
                         for name in SERVICES}
        self.engine = make_engine(self.settings, pool_size=4)
        self.base_url = f"http://127.0.0.1:{self.settings.http_port}"
        self.dunning_group = f"{self.settings.topic_prefix}dunning"
        self._quiescence: Quiescence | None = None

    def start(self) -> None:
        for service in self.services.values():
            service.start()
        wait_http_ready(self.base_url, self.services["ingest"])

    def stop(self) -> None:
        for service in self.services.values():
            service.stop()
        self.forget_observer()
        self.engine.dispose()

    def forget_observer(self) -> None:
        """Drop the quiescence observer (and its Kafka clients); the next use builds a new one."""
        if self._quiescence is not None:
            self._quiescence.close()
            self._quiescence = None

    def alive(self) -> dict[str, bool]:
        return {name: service.alive() for name, service in self.services.items()}

    def kill_worker(self) -> None:
        """kill -9 of the worker's whole process group: no shutdown code runs, as in a crash or an OOM kill."""
        worker = self.services["worker"]
        assert worker.proc is not None
        os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(10)
        self.worker_kills += 1

    def start_again(self, name: str) -> None:
        """Start a service that is not running (after a kill, or found dead by a check)."""
        if not self.services[name].alive():
            self.services[name].start()

    def quiescence(self) -> Quiescence:
        if self._quiescence is None:
            self._quiescence = Quiescence(self.settings, self.engine, self.dunning_group)
        return self._quiescence

    def edge_ready(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def clock_now(self) -> datetime:
        resp = httpx.get(f"{self.base_url}/v1/clock", headers=self.admin_headers(), timeout=10)
        resp.raise_for_status()
        return datetime.fromisoformat(resp.json()["now"])

    def advance_clock(self, **delta: int) -> datetime:
        resp = httpx.post(f"{self.base_url}/v1/clock/advance", json=delta, timeout=30,
                          headers={**self.admin_headers(), "Idempotency-Key": str(uuid.uuid4())})
        resp.raise_for_status()
        return datetime.fromisoformat(resp.json()["now"])

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_KEY}"}

    def scalar(self, sql: str, **params: object) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text(sql), params).scalar_one() or 0)


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.5) -> float | None:
    """Seconds until `predicate()` held, or None when it did not within `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if _holds(predicate):
            return time.monotonic() - started
        time.sleep(interval)
    return None


def _holds(predicate: Callable[[], bool]) -> bool:
    try:
        return predicate()
    except Exception:  # a probe of a component that is still down fails; that is what we wait out
        return False

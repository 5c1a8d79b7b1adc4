"""Fixtures for the quota race tests: the real edge app served by uvicorn on a free port (in a child
process), real PostgreSQL on a fresh schema, the simulated billing clock.

Requests go over real TCP with httpx.AsyncClient, many at once: ASGITransport would run them one after
the other in the test's loop and could not show a race.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from shared.adapters.clock import DatabaseClock
from shared.adapters.postgres.pool import make_pool
from shared.adapters.postgres.quota_lease_store import LeaseStore
from shared.adapters.postgres.quota_store import QuotaStore
from tests.conftest import REPO

ADMIN_KEY = "quota-test-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
START = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EdgeServer:
    """The edge (`python -m services.ingest`, uvicorn) as a child process on 127.0.0.1:<free port>.

    A process of its own, so its event loop does not share a GIL with the test's client; `stop()` is a
    SIGTERM (graceful shutdown), so a stop and a new `EdgeServer` is a restart of the service.
    """

    def __init__(self, settings: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._env = {**os.environ, **settings_env(settings), "BILLING_HTTP_PORT": str(self.port),
                     "BILLING_HTTP_HOST": "127.0.0.1", "BILLING_LOG_LEVEL": "WARNING"}
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> EdgeServer:
        self._log = tempfile.TemporaryFile()
        self._process = subprocess.Popen([sys.executable, "-m", "services.ingest"], cwd=REPO, env=self._env,
                                         stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            if self._process.poll() is not None or time.monotonic() > deadline:
                self._log.seek(0)
                raise RuntimeError(f"the edge did not start:\n{self._log.read().decode()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None


def settings_env(settings: Any) -> dict[str, str]:
    """BILLING_* variables that rebuild ``settings`` in a child process."""
    return dict(settings.to_env())


@pytest.fixture(scope="module")
def quota_settings(settings):  # type: ignore[no-untyped-def]
    return settings.model_copy(update={"clock": "simulated", "simulated_clock_start": START.isoformat(),
                                       "admin_api_key": SecretStr(ADMIN_KEY), "database_pool_size": 5})


LEASE_SECONDS = 2.0  # a short lease life, so the lease tests can wait for an expiry


def leased_settings(settings: Any) -> Any:
    """The quota tests' settings with leases on (the default) and a short lease life."""
    return settings.model_copy(update={"clock": "simulated", "simulated_clock_start": START.isoformat(),
                                       "admin_api_key": SecretStr(ADMIN_KEY), "database_pool_size": 5,
                                       "quota_leases": True, "quota_lease_seconds": LEASE_SECONDS,
                                       "quota_lease_min_rate": 0.0})


@pytest.fixture
async def stores(quota_settings, billing_clock) -> AsyncIterator[tuple[QuotaStore, LeaseStore]]:  # type: ignore[no-untyped-def]
    """The exact path's store and the lease store over a small pool of their own (store-level tests)."""
    pool = make_pool(quota_settings, min_size=1, max_size=4)
    await pool.open(wait=True)
    try:
        yield QuotaStore(pool), LeaseStore(pool)
    finally:
        await pool.close()


@pytest.fixture(scope="module")
def billing_clock(quota_settings, engine) -> DatabaseClock:  # type: ignore[no-untyped-def]
    clock = DatabaseClock(engine, START)
    clock.ensure()
    return clock


@pytest.fixture(scope="module")
def edge(quota_settings, billing_clock) -> Iterator[EdgeServer]:  # type: ignore[no-untyped-def]
    server = EdgeServer(quota_settings).start()
    yield server
    server.stop()


def new_org() -> str:
    return f"org_{uuid.uuid4().hex[:10]}"


def client(base_url: str, connections: int = 200) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url, timeout=60.0,
                             limits=httpx.Limits(max_connections=connections,
                                                 max_keepalive_connections=connections))


async def use_credits(base_url: str, org_id: str, requests: list[tuple[str, str]]) -> list[httpx.Response]:
    """Fire every (user_id, enquiry_id) at once, one connection each, and return the responses in order.

    NOTE: one connection per request on purpose: httpx's pool is slow to hand queued requests to freed
    connections, which would stretch the burst out and make the race milder than it should be.
    """
    async with client(base_url, len(requests)) as http:
        async def post(user: str, enquiry: str) -> httpx.Response:
            return await http.post(f"/v1/quota/orgs/{org_id}/report-credits", headers=ADMIN,
                                   json={"user_id": user, "enquiry_id": enquiry})

        responses = list(await asyncio.gather(*(post(user, enquiry) for user, enquiry in requests)))
        # NOTE: a 503 (no pooled connection within 3 s on a loaded machine) says "retry the same enquiry":
        # retried like a client would, after the burst; the enquiry id keeps it idempotent
        for _ in range(3):
            again = [i for i, response in enumerate(responses) if response.status_code == 503]
            if not again:
                break
            await asyncio.sleep(0.5)
            for i, response in zip(again, await asyncio.gather(*(post(*requests[i]) for i in again)), strict=True):
                responses[i] = response
        return responses


async def admin(base_url: str, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
    async with client(base_url, 2) as http:
        return await http.request(method, path, headers=ADMIN, json=body)


def counters(engine: sa.Engine, org_id: str) -> dict[str, Any]:
    """What PostgreSQL holds for the org, independently of the API."""
    with engine.connect() as conn:
        months = conn.execute(sa.text("SELECT month_start, used, top_ups, plan_monthly_reports FROM quota_org_months"
                                      " WHERE org_id = :o ORDER BY month_start"), {"o": org_id}).all()
        consumptions = conn.execute(sa.text("SELECT count(*) FROM quota_consumptions WHERE org_id = :o"),
                                    {"o": org_id}).scalar_one()
        usage_events = conn.execute(sa.text("SELECT count(*) FROM outbox_messages WHERE topic = 'usage.v1'"
                                            " AND envelope->'payload'->>'customer_id' = :o"), {"o": org_id}
                                    ).scalar_one()
        alerts = conn.execute(sa.text("SELECT kind, threshold_percent, user_id FROM quota_alerts WHERE org_id = :o"
                                      " ORDER BY id"), {"o": org_id}).all()
        alert_events = conn.execute(sa.text("SELECT event_type FROM outbox WHERE topic = 'billing-events.v1'"
                                            " AND envelope->'payload'->>'org_id' = :o ORDER BY id"),
                                    {"o": org_id}).scalars().all()
    return {"months": [tuple(m) for m in months], "consumptions": consumptions, "usage_events": usage_events,
            "alerts": [tuple(a) for a in alerts], "alert_events": list(alert_events)}

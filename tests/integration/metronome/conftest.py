"""The harness of the Metronome-compatible surface: the real edge served by uvicorn on a free port (its
lifespan starts the producer, the outbox relay and the quota pool), the REAL billing worker as a subprocess on
the same schema and topics, and the official SDK pointed at `<edge>/metronome`.

Fixtures (module scope unless said): `edge_settings` (simulated clock at START, admin key ADMIN_KEY),
`container`, `edge_url`, `real_worker`, `metronome_client` (function scope: a `metronome.Metronome` with no
retries, so a test sees the first answer), `native` (an httpx client of the native API with the admin key).
Override `edge_settings` in a test module to change a setting (e.g. `catalog_dir`).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
import metronome
import pytest
from pydantic import SecretStr

from services.ingest.app import create_app
from services.ingest.bootstrap import build_container
from services.ingest.container import Container
from tests.served import served_app, worker_process

pytestmark = pytest.mark.integration
START = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
ADMIN_KEY = "test-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
ANSWER_WAIT_SECONDS = 60.0  # the worker subprocess joins its consumer group first
T = TypeVar("T")


@pytest.fixture(scope="module")
def edge_settings(settings):  # type: ignore[no-untyped-def]
    return settings.model_copy(update={"clock": "simulated", "simulated_clock_start": START.isoformat(),
                                       "command_wait_seconds": ANSWER_WAIT_SECONDS,
                                       "admin_api_key": SecretStr(ADMIN_KEY), "database_pool_size": 5,
                                       "log_level": "WARNING", "scheduler_interval_s": 0.2})


@pytest.fixture(scope="module")
def container(edge_settings) -> Iterator[Container]:  # type: ignore[no-untyped-def]
    built = build_container(edge_settings)
    yield built
    built.engine.dispose()


@pytest.fixture(scope="module")
def edge_url(container: Container) -> Iterator[str]:
    """The app served by uvicorn on a real socket, in a thread of this process (lifespan on)."""
    with served_app(create_app(container)) as url:
        yield url


@pytest.fixture(scope="module")
def real_worker(edge_settings) -> Iterator[subprocess.Popen[bytes]]:  # type: ignore[no-untyped-def]
    """The billing worker as a process on the edge's schema and topics (the edge's relay publishes commands)."""
    with worker_process(edge_settings) as proc:
        yield proc


@pytest.fixture
def metronome_client(edge_url: str, real_worker: subprocess.Popen[bytes]) -> Iterator[metronome.Metronome]:
    with metronome.Metronome(bearer_token=ADMIN_KEY, base_url=f"{edge_url}/metronome", max_retries=0,
                             timeout=ANSWER_WAIT_SECONDS + 30) as client:
        yield client
    assert real_worker.poll() is None, "the billing worker exited"


@pytest.fixture
def native(edge_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=edge_url, headers=ADMIN, timeout=ANSWER_WAIT_SECONDS + 30) as client:
        yield client


def sdk_for(edge_url: str, token: str) -> metronome.Metronome:
    """An SDK client with another of our API keys (scopes)."""
    return metronome.Metronome(bearer_token=token, base_url=f"{edge_url}/metronome", max_retries=0)


def new_key(native: httpx.Client, scopes: list[str], **binding: Any) -> str:
    response = native.post("/v1/api-keys", json={"name": "metronome-test", "scopes": scopes, **binding})
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


def eventually(check: Callable[[], T | None], what: str, timeout: float = ANSWER_WAIT_SECONDS) -> T:
    """Poll `check` until it answers something truthy (a bound on a wait, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.3)

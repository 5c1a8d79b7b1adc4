"""The harness of the Metronome-compatible surface: the real edge served by uvicorn on a free port (its
lifespan starts the producer, the outbox relay and the quota pool), the REAL billing worker as a subprocess on
the same schema and topics, and the official SDK pointed at `<edge>/metronome`.

Fixtures (module scope unless said): `edge_settings` (simulated clock at START, admin key ADMIN_KEY),
`container`, `edge_url`, `real_worker`, `metronome_client` (function scope: a `metronome.Metronome` with no
retries, so a test sees the first answer), `native` (an httpx client of the native API with the admin key).
Override `edge_settings` in a test module to change a setting (e.g. `catalog_dir`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import metronome
import pytest
import uvicorn
from pydantic import SecretStr

from services.ingest.app import create_app
from services.ingest.bootstrap import build_container
from services.ingest.container import Container

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def edge_url(container: Container) -> Iterator[str]:
    """The app served by uvicorn on a real socket, in a thread of this process (lifespan on)."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(container), host="127.0.0.1", port=port, log_config=None,
                                           access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=20)


@pytest.fixture(scope="module")
def real_worker(edge_settings) -> Iterator[subprocess.Popen[bytes]]:  # type: ignore[no-untyped-def]
    """The billing worker as a process on the edge's schema and topics (the edge's relay publishes commands)."""
    proc = subprocess.Popen([sys.executable, "-m", "services.billing_worker", "--no-relay"], cwd=REPO,
                            env={**os.environ, **edge_settings.to_env()}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    yield proc
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


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

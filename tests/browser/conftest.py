"""Browser tests of the console (and the usage portal): the real edge served by uvicorn on a free port, on a
fresh schema and topic prefix with a simulated billing clock, the real billing worker as a process, and a
headless Debian `chromium` driven by Playwright (never Playwright's own browser download).

One browser per test module (`browser`), a fresh context per test (`page`: cookies do not leak between
tests). `api` is an httpx client to the same edge with the admin key, to create the data a test looks at
through the public API. Tests here are synchronous (Playwright's sync API cannot run inside an event loop).
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from tests.served import served_app, worker_process

CHROMIUM = "/usr/bin/chromium"
START = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
ADMIN_KEY = "browser-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
ANSWER_WAIT_SECONDS = 60.0  # the worker process joins its consumer group first


@pytest.fixture(scope="module")
def edge_settings(settings):  # type: ignore[no-untyped-def]
    return settings.model_copy(update={"clock": "simulated", "simulated_clock_start": START.isoformat(),
                                       "command_wait_seconds": ANSWER_WAIT_SECONDS,
                                       "admin_api_key": SecretStr(ADMIN_KEY), "database_pool_size": 5,
                                       "scheduler_interval_s": 0.2})


@pytest.fixture(scope="module")
def base_url(edge_settings) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The edge (its whole app with its lifespan: producer, outbox relay, quota pool) on a free port."""
    from services.ingest.app import create_app
    from services.ingest.bootstrap import build_container

    container = build_container(edge_settings)
    with served_app(create_app(container)) as url:
        yield url
    container.producer.close()
    container.engine.dispose()


@pytest.fixture(scope="module")
def real_worker(edge_settings, base_url) -> Iterator[subprocess.Popen[bytes]]:  # type: ignore[no-untyped-def]
    """The billing worker (consumer, scheduler, payment executor) as a process on the edge's schema and topics
    (the edge's relay publishes the shared outbox, hence `--no-relay`)."""
    with worker_process(edge_settings) as proc:
        yield proc


@pytest.fixture(scope="module")
def api(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, headers=ADMIN, timeout=ANSWER_WAIT_SECONDS + 10) as client:
        yield client


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser, base_url: str) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    context = browser.new_context(base_url=base_url, accept_downloads=True)
    context.set_default_timeout(30_000)
    opened = context.new_page()
    yield opened
    context.close()


def log_in(page: Any, key: str = ADMIN_KEY, then: str = "/console/") -> None:
    """Log in through the console's form (the `next` page is opened afterwards)."""
    page.goto(f"/console/login?next={then}")
    page.fill("input[name=api_key]", key)
    page.click("form.login button[type=submit]")
    page.wait_for_load_state()


def onboard(api: httpx.Client, **fields: Any) -> dict[str, Any]:
    body = {"external_id": f"ext-{uuid.uuid4().hex[:10]}", "kind": "org", "name": "Acme",
            "email": f"billing-{uuid.uuid4().hex[:6]}@acme.test", "currency": "USD", **fields}
    response = api.post("/v1/customers", json=body)
    assert response.status_code in (200, 201), response.text
    return dict(response.json())


def subscribe(api: httpx.Client, customer_id: str, plan_id: str = "pro", **fields: Any) -> dict[str, Any]:
    response = api.post("/v1/subscriptions", json={"customer_id": customer_id, "plan_id": plan_id, **fields})
    assert response.status_code == 201, response.text
    return dict(response.json())


def until(probe: Callable[[], Any], what: str, timeout: float = ANSWER_WAIT_SECONDS) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)

"""The real services, served to a test: the billing worker as a child process, and an ASGI app on a real
socket in a thread of the test process.

    with worker_process(edge_settings) as worker:   # `python -m services.billing_worker --no-relay`
        ...
        assert worker.poll() is None, worker_log(worker)

    with served_app(create_app(container)) as base_url:   # "http://127.0.0.1:<free port>", lifespan on
        ...
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from services.ingest.http_protocol import OneWriteHttpToolsProtocol
from tests.outage_support import free_port

REPO = Path(__file__).resolve().parent.parent
_LOGS: dict[int, Path] = {}


@contextmanager
def worker_process(settings: Any, *, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """The billing worker (consumer, scheduler, payment and refund executors) on `settings`' schema and topics.
    `--no-relay`: the edge the test runs publishes the shared outbox. Its output goes to a file (a pipe that
    nobody reads blocks the worker once it is full); `worker_log` reads its end."""
    with tempfile.NamedTemporaryFile(prefix="billing-worker-", suffix=".log", delete=False) as log:
        path = Path(log.name)
    with path.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.billing_worker", "--no-relay"], cwd=REPO,
                                env=env if env is not None else {**os.environ, **settings.to_env()},
                                stdout=out, stderr=subprocess.STDOUT)
    _LOGS[proc.pid] = path
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        _LOGS.pop(proc.pid, None)
        path.unlink(missing_ok=True)


def worker_log(proc: subprocess.Popen[bytes], tail: int = 2000) -> str:
    """The last `tail` characters the worker wrote (for an assertion's message)."""
    path = _LOGS.get(proc.pid)
    return path.read_text(errors="replace")[-tail:] if path is not None and path.exists() else ""


@contextmanager
def served_app(app: Any, *, start_seconds: float = 30.0) -> Iterator[str]:
    """`app` served by uvicorn on a free port of 127.0.0.1, in a daemon thread, lifespan on, with the edge's
    HTTP protocol (`services/ingest/http_protocol.py`)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False,
                                           lifespan="on", http=OneWriteHttpToolsProtocol))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_seconds
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)

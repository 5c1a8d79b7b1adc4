"""The worker's health endpoint (BILLING_WORKER_HEALTH_PORT; off when unset), stdlib only.

- ``GET /healthz``: liveness, 200 while the process serves requests.
- ``GET /readyz``: 200 ``{"status": "ready", "checks": {"postgres": "ok", "kafka": "ok"}}`` when both answer,
  else 503 with ``"unreachable"`` for the one(s) that do not. The worker keeps running through an outage
  (it retries and resumes on its own), so a failing readiness must not restart it: use /healthz for liveness.

The checks run in a background thread every `interval_s` (a probe on a fresh PostgreSQL connection, a Kafka
metadata request), so a request is answered at once from the last result, however long a probe hangs.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from shared.observability import kv

log = logging.getLogger("billing_worker.health")

Check = Callable[[], bool]


class HealthServer:
    def __init__(self, host: str, port: int, checks: Mapping[str, Check], *, interval_s: float = 1.0,
                 on_close: Callable[[], None] | None = None) -> None:
        self._checks = dict(checks)
        self._interval = interval_s
        self._on_close = on_close
        self._results: dict[str, bool | None] = dict.fromkeys(self._checks)  # None: not probed yet
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._http = ThreadingHTTPServer((host, port), self._handler_class())
        self._http.daemon_threads = True
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        return int(self._http.server_address[1])

    def readiness(self) -> tuple[bool, dict[str, str]]:
        with self._lock:
            results = dict(self._results)
        return (all(results.values()),
                {name: "ok" if ok else "unreachable" if ok is False else "unknown" for name, ok in results.items()})

    def start(self) -> None:
        self._probe_round()
        self._threads = [threading.Thread(target=self._probe_loop, name="health-probes", daemon=True),
                         threading.Thread(target=self._http.serve_forever, name="health-http", daemon=True)]
        for thread in self._threads:
            thread.start()
        log.info("health endpoint listening", extra=kv(port=self.port))

    def stop(self) -> None:
        self._stop.set()
        self._http.shutdown()
        self._http.server_close()
        for thread in self._threads:
            thread.join(10)
        if self._on_close is not None:
            self._on_close()

    def _probe_loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._probe_round()

    def _probe_round(self) -> None:
        for name, check in self._checks.items():
            ok = check()
            with self._lock:
                before, self._results[name] = self._results[name], ok
            if before is not None and before != ok:
                (log.info if ok else log.warning)(f"{name} {'reachable again' if ok else 'unreachable'}",
                                                  extra=kv(dependency=name))

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/healthz":
                    self._answer(200, {"status": "ok"})
                elif self.path == "/readyz":
                    ready, checks = server.readiness()
                    self._answer(200 if ready else 503,
                                 {"status": "ready" if ready else "unavailable", "checks": checks})
                else:
                    self._answer(404, {"status": "not_found"})

            def _answer(self, status: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:  # probes are not news
                return

        return Handler

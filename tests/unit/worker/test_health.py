"""The worker's health endpoint answers from the last probe round: 503 naming what is unreachable."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from services.billing_worker.entrypoints.health import HealthServer

pytestmark = pytest.mark.unit


def get(server: HealthServer, path: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_readiness_names_the_unreachable_dependency_and_liveness_stays_ok() -> None:
    answers = {"postgres": False, "kafka": True}
    server = HealthServer("127.0.0.1", 0, {name: (lambda n=name: answers[n]) for name in answers},
                          interval_s=3600)
    server.start()
    try:
        assert get(server, "/readyz") == (503, {"status": "unavailable",
                                                "checks": {"postgres": "unreachable", "kafka": "ok"}})
        assert get(server, "/healthz") == (200, {"status": "ok"})
        answers["postgres"] = True
        server._probe_round()
        assert get(server, "/readyz") == (200, {"status": "ready", "checks": {"postgres": "ok", "kafka": "ok"}})
        assert get(server, "/nope")[0] == 404
    finally:
        server.stop()

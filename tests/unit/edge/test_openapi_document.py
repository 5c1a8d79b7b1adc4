"""The OpenAPI document declares every status an operation answers (issue 12, defect 9)."""

from __future__ import annotations

from typing import Any

import pytest

from services.ingest.app import create_app
from services.ingest.bootstrap import build_container
from services.ingest.problems import PROBLEM_JSON

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return create_app(build_container()).openapi()  # builds nothing that connects


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in document["paths"].items() for method, op in item.items()]


def test_every_operation_on_an_id_declares_404(document):
    missing = [f"{m.upper()} {p}" for p, m, op in _operations(document) if "{" in p and "404" not in op["responses"]]
    assert missing == []


def test_a_repeated_onboarding_and_a_refused_webhook_are_declared(document):
    assert {"200", "201"} <= document["paths"]["/v1/customers"]["post"]["responses"].keys()
    assert "400" in document["paths"]["/v1/webhooks/stripe"]["post"]["responses"]


def test_every_operation_that_needs_postgresql_or_kafka_declares_503_with_retry_after(document):
    for path, method, op in _operations(document):
        if path in ("/healthz", "/metrics"):
            continue
        assert "Retry-After" in op["responses"]["503"].get("headers", {}) or path == "/readyz", (method, path)


def test_every_error_is_declared_as_problem_json_only(document):
    for path, method, op in _operations(document):
        for status, response in op["responses"].items():
            if int(status) >= 400 and path != "/readyz":
                assert list(response["content"]) == [PROBLEM_JSON], (method, path, status)

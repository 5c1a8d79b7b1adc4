"""A dependency outage is answered 503 with Retry-After, never a 500."""

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.ingest.problems import install_problem_handlers
from shared.errors import DeliveryError

pytestmark = pytest.mark.unit


def app_raising(exc: Exception) -> TestClient:
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/boom")
    def boom() -> None:
        raise exc

    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize("exc", [
    sa.exc.OperationalError("SELECT 1", {}, Exception("connection refused")),
    sa.exc.TimeoutError("QueuePool limit reached"),
    DeliveryError("broker down"),
])
def test_postgresql_or_kafka_unavailable_is_a_503_problem_with_retry_after(exc):
    resp = app_raising(exc).get("/boom")
    assert resp.status_code == 503
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.headers["retry-after"] == "1"
    assert resp.json()["title"] == "Service unavailable"


def test_a_bug_is_still_a_500():
    assert app_raising(KeyError("x")).get("/boom").status_code == 500

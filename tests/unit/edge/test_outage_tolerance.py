"""What the edge serves while PostgreSQL is down: answers it read recently (bounded), 503 for the rest, never
500 (issue 12, defect 7). Fakes at the ports: a loader that fails like PostgreSQL, a fake monotonic clock."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.ingest.idempotency import IdempotencyMiddleware
from services.ingest.last_known import RETRY_AFTER_FAILURE_SECONDS, STALE_FOR_SECONDS, LastKnownCache
from services.ingest.problems import OUTAGE_ERRORS, OutageMiddleware, install_problem_handlers

pytestmark = pytest.mark.unit

DOWN = sa.exc.OperationalError("SELECT", {}, Exception("connection refused"))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Loader:
    def __init__(self) -> None:
        self.down = False
        self.calls = 0

    def __call__(self, keys: set[str]) -> dict[str, str]:
        self.calls += 1
        if self.down:
            raise DOWN
        return {k: f"route of {k}" for k in keys}


def test_an_entry_read_before_the_outage_is_served_stale_and_an_unknown_one_raises_the_outage():
    clock, load = FakeClock(), Loader()
    cache: LastKnownCache[str, str] = LastKnownCache("test", ttl_seconds=2.0, clock=clock)
    cache.get_many({"known"}, load)
    load.down = True
    clock.now += 60

    assert cache.get_many({"known"}, load) == {"known": "route of known"}
    with pytest.raises(OUTAGE_ERRORS):
        cache.get_many({"known", "never-read"}, load)


def test_stale_answers_end_after_the_bound_and_fresh_ones_return_with_the_database():
    clock, load = FakeClock(), Loader()
    cache: LastKnownCache[str, str] = LastKnownCache("test", ttl_seconds=2.0, clock=clock)
    cache.get_many({"known"}, load)
    load.down = True
    clock.now += STALE_FOR_SECONDS + 1

    with pytest.raises(sa.exc.OperationalError):
        cache.get_many({"known"}, load)
    load.down = False
    clock.now += RETRY_AFTER_FAILURE_SECONDS
    assert cache.get_many({"known"}, load) == {"known": "route of known"}


def test_right_after_a_failure_the_database_is_not_asked_again_for_every_request():
    clock, load = FakeClock(), Loader()
    cache: LastKnownCache[str, str] = LastKnownCache("test", ttl_seconds=2.0, clock=clock)
    cache.get_many({"known"}, load)
    load.down = True
    clock.now += 10
    for _ in range(5):
        cache.get_many({"known"}, load)

    assert load.calls == 2


class _DownStore:
    def begin(self, *_: object) -> None:
        raise DOWN


def test_an_idempotency_key_while_postgresql_is_down_is_a_503_with_retry_after_not_a_500():
    app = FastAPI()
    install_problem_handlers(app)

    @app.post("/v1/things")
    def things() -> dict[str, str]:
        return {"ok": "yes"}

    class _Authenticator:
        def authenticate(self, _: str) -> object:
            return type("P", (), {"key_id": "key_1"})()

    app.state.authenticator = _Authenticator()
    app.add_middleware(IdempotencyMiddleware, store=_DownStore(), exempt_paths=frozenset())
    app.add_middleware(OutageMiddleware)

    response = TestClient(app, raise_server_exceptions=False).post(
        "/v1/things", json={}, headers={"Idempotency-Key": "k1", "Authorization": "Bearer t"})

    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "1"


def test_a_value_postgresql_refuses_as_too_large_is_a_422_not_an_outage():
    import psycopg

    app = FastAPI()
    install_problem_handlers(app)
    too_large = psycopg.errors.ProgramLimitExceeded("index row size 5016 exceeds btree version 4 maximum 2704")

    @app.get("/boom")
    def boom() -> None:
        raise sa.exc.OperationalError("INSERT", {}, too_large)

    response = TestClient(app, raise_server_exceptions=False).get("/boom")

    assert response.status_code == 422 and response.json()["type"] == "/problems/value-refused"


def test_a_value_too_long_for_its_column_is_a_422_not_a_500():
    import psycopg

    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/boom")
    def boom() -> None:
        raise sa.exc.DataError("INSERT", {}, psycopg.errors.StringDataRightTruncation("value too long"))

    assert TestClient(app, raise_server_exceptions=False).get("/boom").status_code == 422

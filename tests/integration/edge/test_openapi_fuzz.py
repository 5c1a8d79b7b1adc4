"""Schemathesis against the edge's own OpenAPI document with every check (`--checks all`): no generated request
gets a 5xx, a status, content type, header or body the document does not declare, or in without its API key.

Every operation of /openapi.json (the quota routes included) is exercised with an admin key (so that requests get past
authentication into validation and the handlers), on real PostgreSQL, Kafka and stripe-mock. Path
parameters are either generated or, half of the time, the ids of a seeded customer and subscription,
so that handlers run on data that exists and not only into 404s.
"""

from __future__ import annotations

import os
from datetime import timedelta

import hypothesis.strategies as st
import psutil
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from pydantic import SecretStr
from schemathesis.checks import ALL_CHECKS

from services.ingest.quota_wiring import POOL_MIN
from shared.adapters.postgres.schema.billing import subscriptions
from shared.adapters.postgres.schema.core import customers

from .conftest import ADMIN, ADMIN_KEY, START

pytestmark = pytest.mark.integration

SEEDED_CUSTOMER = "cust_fuzz_seeded"
SEEDED_SUBSCRIPTION = "sub_fuzz_seeded"
# Raise it for a deeper run (EDGE_FUZZ_EXAMPLES=500). The ASGI transport runs the app's whole lifespan per
# generated request, so this also shows that a lifespan leaves nothing open behind it (see
# test_lifespans_leave_no_connection_open).
# The default keeps this run under ~2 minutes in `make test`; `make chaos` runs `python -m chaos.openapi_fuzz`
# (a real uvicorn edge, the schemathesis CLI, --checks all, >= 100 examples per operation).
EXAMPLES_PER_OPERATION = int(os.environ.get("EDGE_FUZZ_EXAMPLES", "15"))


@pytest.fixture(scope="module")
def edge_settings(settings):  # type: ignore[no-untyped-def]
    # A short command wait: commands on the seeded subscription answer 202 instead of waiting 3 s each.
    return settings.model_copy(update={"clock": "simulated", "simulated_clock_start": START.isoformat(),
                                       "command_wait_seconds": 0.2, "admin_api_key": SecretStr(ADMIN_KEY),
                                       "database_pool_size": 5})


@pytest.fixture(scope="module")
def api_schema(app, container):  # type: ignore[no-untyped-def]
    with container.engine.begin() as conn:
        conn.execute(customers.insert().values(customer_id=SEEDED_CUSTOMER, external_id="fuzz-seeded", kind="org",
                                               name="Fuzz", email="fuzz@example.test", currency="USD"))
        conn.execute(subscriptions.insert().values(
            subscription_id=SEEDED_SUBSCRIPTION, customer_id=SEEDED_CUSTOMER, plan_id="pro", status="active",
            seats=1, currency="USD", anchor_day=START.day, started_at=START, current_period_start=START,
            current_period_end=START + timedelta(days=31)))
    schemathesis.experimental.OPEN_API_3_1.enable()  # FastAPI writes OpenAPI 3.1
    return schemathesis.from_asgi("/openapi.json", app)


schema = schemathesis.from_pytest_fixture("api_schema")

_SEEDED = {"customer_id": SEEDED_CUSTOMER, "org_id": SEEDED_CUSTOMER, "subscription_id": SEEDED_SUBSCRIPTION}


@schema.parametrize()
@schema.given(use_seeded=st.booleans())
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
def test_no_generated_request_gets_a_server_error(case, use_seeded):  # type: ignore[no-untyped-def]
    if use_seeded and case.path_parameters:
        case.path_parameters = {k: _SEEDED.get(k, v) for k, v in case.path_parameters.items()}
    # The key goes on the case itself (not as an extra header of the call), so that the `ignored_auth` check
    # can take it away again and see a 401.
    case.headers = {**(case.headers or {}), **ADMIN}
    response = case.call_asgi()
    case.validate_response(response, checks=ALL_CHECKS)


def test_lifespans_leave_no_connection_open(app, container):  # type: ignore[no-untyped-def]
    """Every lifespan opens the quota pool and the producers; each must close what it opened (a second
    lifespan on one app once failed half-way and kept its pool's connections until the process ended)."""
    from starlette_testclient import TestClient

    # This process's own connections to PostgreSQL: pg_stat_activity would also count every other client of
    # the shared database (a demo, another test run), whose pools grow and shrink meanwhile.
    server_port = container.engine.url.port or 5432

    def open_connections() -> int:
        return sum(1 for c in psutil.Process().net_connections(kind="tcp")
                   if c.raddr and c.raddr.port == server_port and c.status == psutil.CONN_ESTABLISHED)

    with TestClient(app) as client:  # a first lifespan: the engine's own pool reaches its working size
        assert client.get("/v1/quota/orgs/nobody", headers=ADMIN).status_code == 404
    before = open_connections()
    during = []
    for _ in range(15):
        with TestClient(app) as client:
            assert client.get("/v1/quota/orgs/nobody", headers=ADMIN).status_code == 404
            during.append(open_connections())
    assert min(during) >= before + POOL_MIN  # the count does see a lifespan's quota pool while it is open
    assert open_connections() == before

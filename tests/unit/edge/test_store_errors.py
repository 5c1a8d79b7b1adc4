"""The quota and spend stores' errors are under the project's error root: refusals with a machine-readable
code (terminal), so a consumer of the family knows whether a retry could succeed; an escaped one is still
answered 500 by the edge (the request's data is not at fault), as before."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.ingest.problems import install_problem_handlers
from shared.adapters.postgres.quota_store import DuplicateEnquiry, QuotaStoreError, UnknownOrg
from shared.adapters.postgres.spend_store import DuplicateAuthorisation, SpendStoreError
from shared.errors import DataRejectedError, RefusedError, refusal_code

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("error", "family", "code"), [
    (UnknownOrg("org_1"), QuotaStoreError, "unknown_org"),
    (DuplicateEnquiry("org_1"), QuotaStoreError, "duplicate_enquiry"),
    (QuotaStoreError("quota backstop refused the write"), QuotaStoreError, "quota_backstop"),
    (DuplicateAuthorisation("req_1"), SpendStoreError, "duplicate_authorisation"),
    (SpendStoreError("spend backstop refused the write"), SpendStoreError, "spend_backstop"),
])
def test_each_store_error_is_a_refusal_with_its_code(error: Exception, family: type[Exception], code: str) -> None:
    assert isinstance(error, family) and isinstance(error, RefusedError) and not isinstance(error, DataRejectedError)
    assert not error.retryable  # type: ignore[attr-defined]
    assert refusal_code(error) == code


@pytest.mark.parametrize("error", [QuotaStoreError("quota backstop refused the write"),
                                   SpendStoreError("spend backstop refused the write")])
def test_a_store_error_that_escapes_a_use_case_is_still_a_500(error: Exception) -> None:
    app = FastAPI()
    install_problem_handlers(app)

    @app.post("/use-case")
    def use_case() -> None:
        raise error

    response = TestClient(app, raise_server_exceptions=False).post("/use-case")
    assert (response.status_code, response.json()["title"]) == (500, "Internal server error")

"""The decision endpoints' fast path against the full FastAPI stack, in the real edge over PostgreSQL: the
same request answered by either gives the same status and the same body. A query string makes the fast path
hand a request to the stack (``services.ingest.quota_fast_path``), so both answer side by side here."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.quota.conftest import ADMIN, EdgeServer, admin, new_org

pytestmark = pytest.mark.integration

STACK = "?via=stack"


async def _credit(edge: EdgeServer, org: str, user: str, enquiry: str, query: str = "") -> httpx.Response:
    async with httpx.AsyncClient(base_url=edge.url, timeout=60) as http:
        return await http.post(f"/v1/quota/orgs/{org}/report-credits{query}", headers=ADMIN,
                               json={"user_id": user, "enquiry_id": enquiry})


async def test_an_admission_replayed_through_the_stack_is_the_fast_path_s_first_answer(edge: EdgeServer) -> None:
    org = new_org()
    assert (await admin(edge.url, "PUT", f"/v1/quota/orgs/{org}/plan", {"plan": "Lite"})).status_code == 200
    first = await _credit(edge, org, "ann", "e1")
    replayed = await _credit(edge, org, "ann", "e1", STACK)
    assert (first.status_code, first.json()["org_remaining"]) == (200, 19)
    assert (replayed.status_code, replayed.content) == (200, first.content)
    assert replayed.headers["idempotent-replayed"] == "true"
    fast_replay = await _credit(edge, org, "ann", "e1")
    assert (fast_replay.content, fast_replay.headers["idempotent-replayed"]) == (first.content, "true")


@pytest.mark.parametrize("setup", ["no_plan", "user_limit", "enquiry_conflict"])
async def test_a_refusal_is_the_same_problem_document_from_the_fast_path_and_the_stack(
        edge: EdgeServer, setup: str) -> None:
    org = new_org()
    user, enquiries = "ann", ("e2", "e3")
    if setup != "no_plan":
        assert (await admin(edge.url, "PUT", f"/v1/quota/orgs/{org}/plan", {"plan": "Lite"})).status_code == 200
    if setup == "user_limit":
        await admin(edge.url, "PUT", f"/v1/quota/orgs/{org}/user-limit", {"limit": 1})
        assert (await _credit(edge, org, "ann", "e1")).status_code == 200
    if setup == "enquiry_conflict":
        assert (await _credit(edge, org, "ann", "e1")).status_code == 200
        user, enquiries = "bob", ("e1", "e1")
    fast = await _credit(edge, org, user, enquiries[0])
    stack = await _credit(edge, org, user, enquiries[1], STACK)
    fast_body, stack_body = fast.json(), stack.json()
    fast_body.pop("enquiry_id", None), stack_body.pop("enquiry_id", None)
    assert fast.status_code == stack.status_code == {"no_plan": 402, "user_limit": 429,
                                                     "enquiry_conflict": 409}[setup]
    assert fast.headers["content-type"] == stack.headers["content-type"] == "application/problem+json"
    assert fast_body == stack_body
    assert fast_body["code"] == {"no_plan": "no_plan", "user_limit": "user_limit_reached",
                                 "enquiry_conflict": "enquiry_conflict"}[setup]


async def test_a_spend_authorisation_refused_by_the_fast_path_matches_the_stack(edge: EdgeServer) -> None:
    org = new_org()  # no subscription on a usage tier: both answer the same refusal
    async with httpx.AsyncClient(base_url=edge.url, timeout=60) as http:
        body = {"request_id": "r1", "quantity": 5}
        fast = await http.post(f"/v1/quota/orgs/{org}/spend/authorisations", headers=ADMIN, json=body)
        stack = await http.post(f"/v1/quota/orgs/{org}/spend/authorisations{STACK}", headers=ADMIN, json=body)
    assert fast.status_code == stack.status_code
    assert fast.status_code in (402, 404, 409, 422)
    assert fast.json() == stack.json()

"""The customer usage page shows an org's report credits of the month per user (issue 19), read from the
quota store the admissions wrote: the real edge over TCP (uvicorn), real PostgreSQL.

An org on its trial (10 reports) with a per-user limit of 5: ana uses 3 reports, ben 1 -> the page says
4 used, and lists ana 3 / 5 and ben 1 / 5, most used first.
"""

from __future__ import annotations

import re
import uuid

import httpx
import pytest

from .conftest import ADMIN, EdgeServer, admin, use_credits

pytestmark = pytest.mark.integration


async def test_the_portal_lists_the_reports_each_user_of_the_org_used_this_month(edge: EdgeServer) -> None:
    onboarded = await admin(edge.url, "POST", "/v1/customers",
                            {"external_id": f"ext-{uuid.uuid4().hex[:10]}", "kind": "org", "name": "Report Org",
                             "email": "ops@report.test", "currency": "USD"})
    assert onboarded.status_code == 201, onboarded.text
    org = onboarded.json()["customer_id"]
    assert (await admin(edge.url, "POST", f"/v1/quota/orgs/{org}/trial", {})).status_code == 200
    assert (await admin(edge.url, "PUT", f"/v1/quota/orgs/{org}/user-limit", {"limit": 5})).status_code == 200
    answers = await use_credits(edge.url, org, [("ana", "e1"), ("ana", "e2"), ("ana", "e3"), ("ben", "e4")])
    assert [a.status_code for a in answers] == [200, 200, 200, 200], [a.text for a in answers]

    link = await admin(edge.url, "POST", f"/v1/customers/{org}/portal-links", {"expires_in": 600})
    assert link.status_code == 201, link.text
    assert link.json()["url"].startswith(edge.url + "/portal/")
    async with httpx.AsyncClient(timeout=30) as http:
        page = await http.get(link.json()["url"])
        assert page.status_code == 200, page.text
        other = await http.get(link.json()["url"].replace("/portal/", "/portal/x"), headers=ADMIN)
    assert other.status_code == 403  # an admin key does not open a tampered link either
    section = re.search(r'<section id="reports">(.*?)</section>', page.text, re.S)
    assert section is not None, page.text
    assert "4 used" in section.group(1)
    rows = re.findall(r"<tr><td>([^<]+)</td><td class=\"num\">(\d+)</td><td class=\"num\">([^<]+)</td></tr>",
                      section.group(1))
    assert rows == [("ana", "3", "5"), ("ben", "1", "5")], rows

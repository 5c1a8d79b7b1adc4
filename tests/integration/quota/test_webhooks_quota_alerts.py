"""Quota alerts reach webhook endpoints (issue 15, item 6): the edge (a child process, its outbox relay on)
writes each alert in the outbox with the consumption that caused it, the relay publishes it on
billing-events.v1, and the webhooks service (in this process) fans it out and delivers it signed. The quota
REST answers are the ones they always were (200 while credits last, then 402).

Lite is 20 reports a month with the default thresholds: 21 enquiries at once on 15 January give 20 x 200 and
1 x 402, and the alerts of that state: two thresholds reached (80 % and 100 %) and the limit reached, plus
on track to the limit when a batch of the burst ended half-way (the internal quota.on_track_to_exceed is
published as quota.on_track_to_limit: tests/unit/webhooks).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from services.webhooks.bootstrap import WebhooksService, build_webhooks
from shared.config import Settings
from shared.contracts.webhook_events import public_event
from tests.integration.edge.test_webhooks_delivery import Receiver
from tests.integration.quota.conftest import EdgeServer, admin, counters, new_org, use_credits

pytestmark = pytest.mark.integration
QUOTA_EVENTS = ["quota.threshold_reached", "quota.limit_reached", "quota.on_track_to_limit"]
ON_TRACK = "quota.on_track_to_exceed"


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


@pytest.fixture(scope="module")
def webhooks(quota_settings: Settings) -> Iterator[WebhooksService]:
    service = build_webhooks(quota_settings, group_id=f"webhooks-{uuid.uuid4().hex[:8]}", http_timeout=2.0,
                             concurrency=2, dispatch_interval=0.2)
    stop = threading.Event()
    service.start(stop)
    yield service
    stop.set()
    service.join()


async def test_quota_alerts_are_delivered_to_webhook_endpoints_once_each(
        edge: EdgeServer, engine: sa.Engine, receiver: Receiver, webhooks: WebhooksService) -> None:
    registered = await admin(edge.url, "POST", "/v1/webhook-endpoints",
                             {"url": receiver.url("/quota"), "events": QUOTA_EVENTS})
    assert registered.status_code == 201, registered.text
    receiver.secrets["/quota"] = registered.json()["secret"]
    org = new_org()
    assert (await admin(edge.url, "PUT", f"/v1/quota/orgs/{org}/plan", {"plan": "Lite"})).status_code == 200

    answers = await use_credits(edge.url, org, [("u", f"q-{i}") for i in range(21)])
    assert Counter(r.status_code for r in answers) == {200: 20, 402: 1}  # the quota answers, unchanged

    published = counters(engine, org)["alert_events"]  # the outbox rows, written with the consumption
    # The end state's alerts, and at most one more: on track to the limit, when the burst was decided in several
    # batches and one of them ended with 10 to 19 reports used (half of Lite's 20 by mid-month). How the 21
    # requests fall into batches follows their arrival, so that alert is there in about one run in twenty.
    assert [kind for kind in published if kind != ON_TRACK] == [
        "quota.threshold_reached", "quota.threshold_reached", "quota.limit_reached"]
    assert published.count(ON_TRACK) <= 1
    deadline = time.monotonic() + 60
    while len(receiver.delivered("/quota")) < len(published):
        assert time.monotonic() < deadline, f"delivered {receiver.delivered('/quota')} of {published}"
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)  # nothing more may arrive
    got = receiver.delivered("/quota")
    # in order: one org is one ordering key
    assert [r["type"] for r in got] == [public_event(kind, {}) for kind in published]
    assert len({r["id"] for r in got}) == len(got)
    assert receiver.bad_signatures == []

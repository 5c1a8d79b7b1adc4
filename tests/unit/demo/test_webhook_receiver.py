"""The demo's webhook receiver verifies signatures, counts each event once, and is 'down' for its first requests."""

from __future__ import annotations

import json

import pytest

from services.demo.webhook_receiver import WebhookReceiver
from shared.adapters.webhooks.signing import sign

pytestmark = pytest.mark.unit


def test_it_refuses_its_first_requests_then_verifies_and_counts_each_event_once() -> None:
    receiver = WebhookReceiver(fail_first=1)
    receiver.secret = "whsec_demo"
    body = json.dumps({"id": "evt_1", "type": "invoice.paid", "created": 0, "data": {}}).encode()
    header = sign(body, "whsec_demo", 1_700_000_000)

    assert receiver.receive(body, header) == 503  # down
    assert receiver.receive(body, header) == 200
    assert receiver.receive(body, header) == 200  # a redelivery: acknowledged, not counted twice
    assert receiver.receive(body, sign(body, "whsec_other", 1_700_000_000)) == 400

    assert receiver.summary() == {"requests": 4, "answered_503_while_down": 1, "bad_signatures": 1,
                                  "events_received": 1, "duplicates_ignored": 1, "by_type": {"invoice.paid": 1}}

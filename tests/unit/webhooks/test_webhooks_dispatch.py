"""Dispatch on fakes: retries with backoff while a receiver is down, delivery in order per subscription once
it is back, one failing endpoint never holding back another, disable after 3 days, manual redelivery."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from services.webhooks.service_layer.dispatch import dispatch_due
from services.webhooks.service_layer.fan_out import Consumed, fan_out
from shared.adapters.clock import ManualClock
from shared.contracts.envelope import new_envelope

from .fakes import FakeDeliveryStore, InlinePool, ScriptedSender

pytestmark = pytest.mark.unit
T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
DOWN, UP = "http://down.test/hook", "http://up.test/hook"


def events(store: FakeDeliveryStore, clock: ManualClock, *types: str, sub: str = "sub_1") -> None:
    batch = [Consumed(new_envelope(t, {"subscription_id": sub, "customer_id": "cus_1", "invoice_id": "in_1"},
                                   producer="billing-worker", occurred_at=clock.now()), sub) for t in types]
    fan_out(store, batch, clock.now())


def run(store: FakeDeliveryStore, sender: ScriptedSender, clock: ManualClock) -> list[str]:
    return [outcome for _, outcome in dispatch_due(store, sender, InlinePool(), clock.now())]


def types_sent(sender: ScriptedSender, url: str) -> list[str]:
    return [json.loads(body)["type"] for u, body in sender.sent if u == url]


def test_a_receiver_down_for_minutes_gets_every_event_once_in_order_and_others_are_not_held_back() -> None:
    store, clock, sender = FakeDeliveryStore(), ManualClock(T0), ScriptedSender(down={DOWN})
    store.add_endpoint("we_down", ["*"], DOWN)
    store.add_endpoint("we_up", ["*"], UP)
    events(store, clock, "invoice.finalized", "invoice.paid")
    assert run(store, sender, clock) == ["retry", "delivered"]  # we_down's head fails; we_up's goes
    assert run(store, sender, clock) == ["delivered"]  # we_up's second; we_down's second waits its turn
    for minutes in (1, 2, 4):  # +1 min, +3 min, +7 min: still down
        clock.advance(timedelta(minutes=minutes))
        assert run(store, sender, clock) == ["retry"]
    sender.down.clear()
    clock.advance(timedelta(minutes=8))
    assert run(store, sender, clock) == ["delivered"]
    assert run(store, sender, clock) == ["delivered"]
    assert types_sent(sender, UP) == ["invoice.finalized", "invoice.paid"]
    assert types_sent(sender, DOWN) == ["invoice.finalized"] * 5 + ["invoice.paid"]
    assert store.status_of("we_down") == [("invoice.finalized", "delivered"), ("invoice.paid", "delivered")]
    assert store.endpoints["we_down"].failing_since is None


def test_the_next_attempt_waits_for_its_backoff() -> None:
    store, clock, sender = FakeDeliveryStore(), ManualClock(T0), ScriptedSender(down={DOWN})
    store.add_endpoint("we_down", ["*"], DOWN)
    events(store, clock, "invoice.finalized")
    run(store, sender, clock)
    clock.advance(timedelta(seconds=59))
    assert run(store, sender, clock) == []
    clock.advance(timedelta(seconds=1))
    assert run(store, sender, clock) == ["retry"]


def test_an_endpoint_failing_every_attempt_for_3_days_is_disabled_with_a_notice_and_its_deliveries_abandoned() -> None:
    store, clock, sender = FakeDeliveryStore(), ManualClock(T0), ScriptedSender(down={DOWN})
    store.add_endpoint("we_down", ["*"], DOWN)
    events(store, clock, "invoice.finalized", "invoice.paid")
    events(store, clock, "credits.granted", sub="sub_2")
    outcomes: list[str] = []
    while "endpoint_disabled" not in outcomes:
        clock.advance(timedelta(minutes=30))
        outcomes += run(store, sender, clock)
        assert clock.now() - T0 <= timedelta(days=3, hours=1)
    assert not store.endpoints["we_down"].enabled and store.endpoints["we_down"].disabled_reason == "failing"
    assert {status for _, status in store.status_of("we_down")} == {"abandoned"}
    ((endpoint_id, message, _),) = store.notices
    assert endpoint_id == "we_down" and "disabled" in message
    events(store, clock, "invoice.voided")
    assert "invoice.voided" not in {type_ for type_, _ in store.status_of("we_down")}
    assert run(store, sender, clock) == []  # a disabled endpoint gets nothing


def test_a_manual_redelivery_sends_the_same_event_id_again_once() -> None:
    store, clock, sender = FakeDeliveryStore(), ManualClock(T0), ScriptedSender()
    store.add_endpoint("we_up", ["*"], UP)
    events(store, clock, "invoice.paid")
    run(store, sender, clock)
    (row,) = store.rows.values()
    row.redeliver = True
    assert run(store, sender, clock) == ["delivered"]
    assert run(store, sender, clock) == []
    first, second = (json.loads(body) for _, body in sender.sent)
    assert first == second and first["id"] == str(row.new.event_id)
    assert [(n, manual) for _, n, _, _, manual in store.attempts] == [(1, False), (2, True)]


def test_a_round_takes_at_most_per_endpoint_deliveries_of_one_endpoint_so_others_still_go() -> None:
    store, clock, sender = FakeDeliveryStore(), ManualClock(T0), ScriptedSender(down={DOWN})
    store.add_endpoint("we_down", ["*"], DOWN)
    for n in range(30):  # 30 subscriptions: 30 heads due at once at the failing endpoint
        events(store, clock, "invoice.finalized", sub=f"sub_{n}")
    store.add_endpoint("we_up", ["*"], UP)
    events(store, clock, "invoice.paid", sub="sub_late")
    done = dispatch_due(store, sender, InlinePool(), clock.now(), limit=100, per_endpoint=25)
    assert Counter(d.endpoint_id for d, _ in done) == {"we_down": 25, "we_up": 1}

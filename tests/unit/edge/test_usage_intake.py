"""Usage intake at the edge without PostgreSQL or Kafka: the fate of each event of a batch (accepted, parked,
refused with its code, duplicate), parking through the outbox, and the replay of parked usage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from services.ingest.directory import Route
from services.ingest.service_layer import usage_intake
from services.ingest.service_layer.usage_intake import Intake
from shared.adapters.catalog_file import load_default_catalog
from shared.contracts import topics
from shared.contracts.usage_rules import UsageProblem
from shared.sdk.events import UsageEvent, ValidEvent, utc_text

from .fakes import FakeDatabase

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
CATALOG = load_default_catalog()
ACTIVE = Route("cust_1", "sub_1", "pro", "active")


class NoSpendLimit:
    def refuse(self, route: Route, event: Any) -> None:
        return None


class OverLimit:
    def refuse(self, route: Route, event: Any) -> tuple[str, UsageProblem]:
        return "spend_limit_reached", UsageProblem("properties", "over the cap", "spend_limit_reached")


def _event(tx: str, customer: str = "cust_1", event_type: str = "inference", **properties: Any) -> ValidEvent:
    return ValidEvent.of(UsageEvent.model_validate({
        "transaction_id": tx, "customer_id": customer, "event_type": event_type,
        "timestamp": (NOW - timedelta(minutes=1)).isoformat(), "properties": properties or {"cost_usd_micros": 5}}))


def _sort(events: list[ValidEvent], routes: dict[str, Route], spend: Any = None) -> Intake:
    return usage_intake.sort_events(list(enumerate(events)), routes, CATALOG, spend or NoSpendLimit(),
                                    received_at_utc=utc_text(NOW), correlation_id="req-1")


def test_an_event_of_a_live_subscription_becomes_a_usage_message_keyed_by_it() -> None:
    intake = _sort([_event("tx-1")], {"cust_1": ACTIVE})

    assert intake.accepted == [(0, "tx-1")] and intake.rejected == []
    [message] = intake.usage
    envelope = orjson.loads(message["value"])
    assert message["key"] == b"sub_1"
    assert (envelope["type"], envelope["payload"]["subscription_id"], envelope["correlation_id"]) == (
        "usage.recorded", "sub_1", "req-1")


def test_a_repeat_of_a_transaction_in_one_request_is_a_duplicate_sent_once() -> None:
    intake = _sort([_event("tx-1"), _event("tx-1")], {"cust_1": ACTIVE})

    assert (intake.accepted, intake.duplicates, len(intake.usage)) == ([(0, "tx-1")], [(1, "tx-1")], 1)


def test_an_unknown_customer_is_parked_not_refused() -> None:
    intake = _sort([_event("tx-1", customer="ext-9")], {"ext-9": Route(None)})

    assert [i for i, _ in intake.parked] == [0] and intake.usage == []


@pytest.mark.parametrize(("route", "code"), [
    (Route("cust_1", "sub_1", "pro", "paused"), "subscription_paused"),
    (Route("cust_1"), "no_active_subscription"),
    (Route("cust_1", "sub_1", "no_such_plan", "active"), "unknown_plan"),
])
def test_a_customer_whose_subscription_takes_no_usage_is_refused_with_the_reason(route: Route, code: str) -> None:
    intake = _sort([_event("tx-1")], {"cust_1": route})

    assert [(i, tx, c) for i, tx, c, _ in intake.rejected] == [(0, "tx-1", code)] and intake.usage == []


def test_an_event_type_the_plan_does_not_meter_or_without_its_number_is_refused() -> None:
    intake = _sort([_event("tx-1", event_type="teleportation"), _event("tx-2", cost_usd_micros="lots")],
                   {"cust_1": ACTIVE})

    assert [(tx, code, problem.field) for _, tx, code, problem in intake.rejected] == [
        ("tx-1", "unknown_event_type", "event_type"), ("tx-2", "missing_property", "properties.cost_usd_micros")]


def test_the_spend_gate_refuses_an_event_over_its_orgs_limit() -> None:
    intake = _sort([_event("tx-1")], {"cust_1": ACTIVE}, OverLimit())

    assert [code for _, _, code, _ in intake.rejected] == ["spend_limit_reached"] and intake.usage == []


def test_parking_stores_the_event_and_its_stream_copy_in_one_commit() -> None:
    db = FakeDatabase()
    event = _event("tx-1", customer="ext-9")

    usage_intake.park(db, [event], "key_1")
    usage_intake.park(db, [event], "key_1")  # a producer's retry

    assert db.commits == 2 and list(db.state.unmatched) == [("ext-9", "tx-1")]
    [(topic, key, _, event_type, body)] = db.state.documents
    assert (topic, key, event_type, body) == (topics.USAGE_UNMATCHED, "ext-9", "usage.unmatched", event.as_json())


def test_a_replay_sends_the_parked_usage_and_marks_it_in_one_commit() -> None:
    db = FakeDatabase()
    usage_intake.park(db, [_event("tx-1", customer="ext-9"), _event("tx-2", customer="ext-9", event_type="x")],
                      "key_1")

    replay = usage_intake.replay_unmatched(db, CATALOG, Route("cust_1", "sub_1", "pro", "active"), "ext-9", NOW,
                                           None)

    assert replay.replayed == 1 and [(tx, p.code) for _, tx, p in replay.still_rejected] == [
        ("tx-2", "unknown_event_type")]
    usage = [d for d in db.state.documents if d[0] == topics.USAGE]
    assert [(key, body["payload"]["transaction_id"], body["producer"]) for _, key, _, _, body in usage] == [
        ("sub_1", "tx-1", "ingest.replay")]
    assert usage_intake.unmatched_page(db, customer_ref="ext-9", include_replayed=False, after=None, limit=10) == []


def test_a_replay_for_a_customer_still_unknown_or_without_a_subscription_is_refused() -> None:
    db = FakeDatabase()

    with pytest.raises(usage_intake.CustomerStillUnknown):
        usage_intake.replay_unmatched(db, CATALOG, Route(None), "ext-9", NOW, None)
    with pytest.raises(usage_intake.NoSubscriptionAcceptsUsage):
        usage_intake.replay_unmatched(db, CATALOG, Route("cust_1", "sub_1", "pro", "paused"), "ext-9", NOW, None)

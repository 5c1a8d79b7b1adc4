"""The billing subscription behind an org's report plan (issue 15, item 4), against the fake unit of work: the
first plan subscribes a billing customer, a later one changes that subscription at once, the same plan sends
nothing, a quota-only org gets nothing, an ended subscription is replaced."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.ingest.auth import Principal, Scope
from services.ingest.service_layer.quota_subscription import (
    follow_report_plan,
    grant_top_up,
    grant_trial,
    top_up_grant_id,
)
from shared.adapters.catalog_file import load_default_catalog

from .fakes import FakeDatabase

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
ADMIN = Principal(key_id="admin", scopes=frozenset({Scope.ADMIN}))
CATALOG = load_default_catalog()


def _database() -> FakeDatabase:
    db = FakeDatabase()
    db.state.customer_rows["org_1"] = {
        "customer_id": "org_1", "external_id": "acme", "kind": "org", "name": "Acme", "email": "b@acme.test",
        "currency": "USD", "timezone": "UTC", "tax_rate_bps": 0, "stripe_customer_id": "cus_1",
        "default_payment_method_id": "pm_default"}
    return db


def _follow(db: FakeDatabase, plan_id: str, subscription_id: str | None, org_id: str = "org_1"):  # type: ignore[no-untyped-def]
    return follow_report_plan(db, CATALOG, org_id, plan_id, subscription_id, principal=ADMIN, now=NOW,
                              request_id="req-1")


def test_the_first_plan_subscribes_the_org_and_a_later_one_changes_that_subscription_at_once() -> None:
    db = _database()

    first = _follow(db, "reports_basic", None)
    assert first.subscription_id is not None and first.accepted is not None
    sid = first.subscription_id
    db.state.subscriptions[sid] = {"subscription_id": sid, "customer_id": "org_1", "plan_id": "reports_basic",
                                   "status": "active"}

    changed = _follow(db, "reports_ultimate", sid)

    assert changed.subscription_id == sid and changed.accepted is not None
    [(_, key1, create), (_, key2, change)] = db.state.outbox
    assert (key1, create.type, create.payload["plan_id"]) == (sid, "subscription.create", "reports_basic")
    assert (key2, change.type, change.payload["plan_id"], change.payload["timing"]) == (
        sid, "subscription.change_plan", "reports_ultimate", "immediate")
    assert [a["action"] for a in db.state.audit] == ["subscription.create", "subscription.change_plan"]


def test_the_plan_the_subscription_already_has_sends_nothing() -> None:
    db = _database()
    sid = _follow(db, "reports_lite", None).subscription_id
    assert sid is not None
    db.state.subscriptions[sid] = {"subscription_id": sid, "customer_id": "org_1", "plan_id": "reports_lite",
                                   "status": "active"}

    again = _follow(db, "reports_lite", sid)

    assert (again.subscription_id, again.accepted, len(db.state.outbox)) == (sid, None, 1)


def test_a_quota_only_org_or_a_subscription_of_another_org_gets_no_command() -> None:
    db = _database()

    assert _follow(db, "reports_basic", None, org_id="quota_only").subscription_id is None
    assert _follow(db, "reports_basic", "sub_not_routed").subscription_id is None
    assert (db.state.outbox, db.state.routes) == ([], {})


def test_an_ended_subscription_is_replaced_by_a_new_one() -> None:
    db = _database()
    old = _follow(db, "reports_basic", None).subscription_id
    assert old is not None
    db.state.subscriptions[old] = {"subscription_id": old, "customer_id": "org_1", "plan_id": "reports_basic",
                                   "status": "cancelled"}

    new = _follow(db, "reports_basic", old)

    assert new.subscription_id not in (None, old)
    assert [e.type for _, _, e in db.state.outbox] == ["subscription.create", "subscription.create"]


def test_a_top_up_is_one_unit_grant_on_the_reports_meter_of_the_orgs_subscription_per_top_up_id() -> None:
    db = _database()
    sid = _follow(db, "reports_basic", None).subscription_id
    assert sid is not None
    month_end = datetime(2026, 4, 1, tzinfo=UTC)

    first = grant_top_up(db, "org_1", sid, 50, "tu-1", month_end, principal=ADMIN, now=NOW, request_id=None)
    retry = grant_top_up(db, "org_1", sid, 50, "tu-1", month_end, principal=ADMIN, now=NOW, request_id=None)

    assert first is not None and retry is not None
    grants = [e.payload for _, _, e in db.state.outbox if e.type == "credits.grant"]
    assert [(g["grant_id"], g["meter_id"], g["units"], g["source"], g["expires_at"]) for g in grants] == [
        (top_up_grant_id(sid, "tu-1"), "reports", "50", "top_up", "2026-04-01T00:00:00Z")] * 2  # one id: once


def test_a_top_up_of_an_org_without_a_subscription_of_its_own_sends_nothing() -> None:
    db = _database()
    month_end = datetime(2026, 4, 1, tzinfo=UTC)

    assert grant_top_up(db, "org_1", None, 5, "tu", month_end, principal=ADMIN, now=NOW, request_id=None) is None
    assert grant_top_up(db, "org_1", "sub_other", 5, "tu", month_end, principal=ADMIN, now=NOW,
                        request_id=None) is None
    assert db.state.outbox == []


def test_the_trial_is_one_unit_grant_of_its_own_that_no_top_up_id_can_share() -> None:
    db = _database()
    sid = _follow(db, "reports_trial", None).subscription_id
    assert sid is not None
    ends = datetime(2026, 3, 24, 12, 0, tzinfo=UTC)

    grant_trial(db, "org_1", sid, 10, ends, principal=ADMIN, now=NOW, request_id=None)
    grant_top_up(db, "org_1", sid, 5, "trial", ends, principal=ADMIN, now=NOW, request_id=None)

    grants = [e.payload for _, _, e in db.state.outbox if e.type == "credits.grant"]
    assert [(g["source"], g["units"], g["expires_at"]) for g in grants] == [
        ("trial", "10", "2026-03-24T12:00:00Z"), ("top_up", "5", "2026-03-24T12:00:00Z")]
    assert grants[0]["grant_id"] != grants[1]["grant_id"]

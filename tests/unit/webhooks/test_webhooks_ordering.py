"""The ordering rule: per (endpoint, subscription) the earliest pending delivery goes first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.webhooks.service_layer.ordering import PendingRef, due

pytestmark = pytest.mark.unit
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)


def test_a_later_event_of_a_subscription_waits_while_an_earlier_one_is_pending_even_when_it_is_due() -> None:
    pending = [PendingRef(1, "we_a", "sub_1", LATER), PendingRef(2, "we_a", "sub_1", NOW)]
    assert due(pending, NOW) == []
    assert [r.seq for r in due(pending, LATER)] == [1]


def test_other_subscriptions_and_other_endpoints_are_independent() -> None:
    pending = [PendingRef(1, "we_a", "sub_1", LATER), PendingRef(2, "we_a", "sub_2", NOW),
               PendingRef(3, "we_b", "sub_1", NOW), PendingRef(4, "we_b", "sub_1", NOW)]
    assert [r.seq for r in due(pending, NOW)] == [2, 3]

"""Derived ids are stored (invoice, attempt and event ids): the way they are computed may change, the ids may not."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from shared.domain.calendar import Period
from shared.domain.ids import IDS, SubscriptionId, attempt_id_for, derived_id, event_uuid, invoice_id_for
from shared.domain.invoice import InvoiceKey, InvoiceReason


def test_an_event_id_is_the_uuid5_of_its_parts_joined_by_bars() -> None:
    cases = [("sub_1", "credits.granted", "k"), ("in_9", "invoice.paid"), ("sub_é", "status", 3, "active"),
             ("",), tuple(range(50)), ("ünïcødé ✓", None, 1.5)]
    for parts in cases:
        assert event_uuid(*parts) == uuid.uuid5(IDS, "|".join(str(p) for p in parts))
    # as stored rows hold it
    assert str(event_uuid("sub_1", "credits.granted", "k")) == "3bd80519-0225-51ba-bea1-a5316f96abba"


def test_invoice_and_attempt_ids_keep_their_stored_form() -> None:
    key = InvoiceKey(SubscriptionId("sub_000001"), InvoiceReason.PERIOD_CLOSE,
                     Period(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)))
    assert invoice_id_for(key) == "in_" + uuid.uuid5(IDS, str(key)).hex[:24]
    assert attempt_id_for("in_abc", 1) == "pa_" + uuid.uuid5(IDS, "in_abc|1").hex[:24]
    assert derived_id("x", "a", 2) == "x_" + uuid.uuid5(IDS, "a|2").hex[:24]


def test_an_invoice_keys_text_is_its_parts_with_utc_instants_whatever_zone_built_it() -> None:
    paris = ZoneInfo("Europe/Paris")
    start, end = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
    utc_key = InvoiceKey(SubscriptionId("sub_1"), InvoiceReason.PERIOD_CLOSE, Period(start, end))
    paris_key = InvoiceKey(SubscriptionId("sub_1"), InvoiceReason.PERIOD_CLOSE,
                           Period(start.astimezone(paris), end.astimezone(paris)))
    text = "sub_1|period_close|2026-01-01T00:00:00+00:00|2026-02-01T00:00:00+00:00"
    assert str(paris_key) == str(utc_key) == text
    assert str(InvoiceKey(SubscriptionId("sub_1"), InvoiceReason.MANUAL, Period(start, end))) == text.replace(
        "period_close", "manual")

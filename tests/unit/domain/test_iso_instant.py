"""`iso_instant` memoises the text of aware UTC instants (a billing run writes the same period bounds thousands of
times): it must always be `isoformat()`, and an equal instant in another zone keeps its own text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from shared.domain.calendar import iso_instant


def test_an_instant_is_written_as_isoformat_writes_it() -> None:
    for at in (datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 2, 1, 0, 0, 0, 250000, tzinfo=UTC),
               datetime(2026, 2, 1, tzinfo=ZoneInfo("Europe/Paris")), datetime(2026, 2, 1)):
        assert iso_instant(at) == at.isoformat()
        assert iso_instant(at) == at.isoformat()  # memoised or not, the same text


def test_an_equal_instant_in_another_zone_keeps_its_own_text() -> None:
    utc = datetime(2026, 2, 1, tzinfo=UTC)
    paris = utc.astimezone(ZoneInfo("Europe/Paris"))
    fixed = utc.astimezone(timezone(timedelta(hours=-5)))
    assert utc == paris == fixed
    assert [iso_instant(utc), iso_instant(paris), iso_instant(fixed)] == [
        "2026-02-01T00:00:00+00:00", "2026-02-01T01:00:00+01:00", "2026-01-31T19:00:00-05:00"]

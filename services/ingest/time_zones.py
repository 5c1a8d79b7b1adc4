"""The one check of an IANA time zone named in a request body (customers, quota plans and trials)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

from shared.domain.calendar import zone
from shared.domain.errors import CalendarError


def _known_zone(value: str) -> str:
    try:
        zone(value)  # the domain's rule: the zone the calendar will use, or CalendarError
    except CalendarError as exc:
        raise ValueError("not an IANA time zone") from exc
    return value


TimeZoneName = Annotated[str, Field(min_length=1, max_length=64, description="an IANA time zone, e.g. Europe/Paris"),
                         AfterValidator(_known_zone)]

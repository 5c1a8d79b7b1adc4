"""Metronome's pagination over our cursors.

Metronome lists take `limit` and `next_page` (query parameters for GETs, body fields for POST lists) and answer
`{"data": [...], "next_page": <cursor or null>}`; the SDK follows `next_page` until it is null. Our cursors are
the native ones (`services.ingest.pagination`: base64url of the last item's sort key), passed through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from services.ingest.pagination import decode_cursor, encode_cursor
from services.ingest.problems import FieldError, ProblemError

T = TypeVar("T")
DEFAULT_LIMIT = 25  # Metronome's default page size
MAX_LIMIT = 100


def after_of(next_page: str | None) -> str | None:
    """The sort key a `next_page` cursor names (None: the first page); 400 for a cursor we did not hand out."""
    try:
        return decode_cursor(next_page)
    except ProblemError as exc:
        raise ProblemError(400, "Invalid cursor", "pass back a next_page value unchanged", slug="cursor",
                           errors=[FieldError(field="next_page", reason="not a cursor of this API")]) from exc


def limit_of(limit: int | None) -> int:
    """The page size asked for, within 1..MAX_LIMIT (Metronome's bounds); 400 outside them."""
    if limit is None:
        return DEFAULT_LIMIT
    if not 1 <= limit <= MAX_LIMIT:
        raise ProblemError(400, "Invalid limit", f"limit is 1 to {MAX_LIMIT}", slug="validation",
                           errors=[FieldError(field="limit", reason=f"between 1 and {MAX_LIMIT}")])
    return limit


def page(items: Sequence[T], limit: int, key: Callable[[T], str], shape: Callable[[T], Any]) -> dict[str, Any]:
    """One Metronome page from up to `limit + 1` items in sort order: the extra item only tells that another
    page exists; `next_page` names the last item shown."""
    shown = list(items[:limit])
    more = len(items) > limit and bool(shown)
    return {"data": [shape(item) for item in shown], "next_page": encode_cursor(key(shown[-1])) if more else None}

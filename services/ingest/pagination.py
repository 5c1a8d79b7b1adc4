"""Cursor pagination for list endpoints: `?limit=&cursor=` in, `{data, next_cursor}` out.

Cursors are opaque (base64url of the last item's sort key); `next_cursor` is null on the last page.
Keyset pagination stays correct while rows are appended, unlike offsets.
"""

from __future__ import annotations

import base64
import binascii
from typing import Generic, TypeVar

from pydantic import BaseModel

from services.ingest.problems import FieldError, ProblemError

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    data: list[T]
    next_cursor: str | None = None


def encode_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def invalid_cursor() -> ProblemError:
    """The answer to a cursor this API did not hand out (decoded here, or refused by a read adapter)."""
    return ProblemError(422, "Invalid cursor", "pass back a next_cursor value unchanged", slug="cursor",
                        errors=[FieldError(field="cursor", reason="not a cursor of this API")])


def decode_cursor(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    try:
        key = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise invalid_cursor() from exc
    if "\x00" in key:  # never produced by encode_cursor; PostgreSQL text cannot hold it
        raise invalid_cursor()
    return key


def decode_int_cursor(cursor: str | None) -> int | None:
    """A cursor over an integer key (identity columns)."""
    key = decode_cursor(cursor)
    if key is None:
        return None
    if not key.isascii() or not key.isdigit() or len(key) > 18:
        raise invalid_cursor()
    return int(key)

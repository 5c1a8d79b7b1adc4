"""Array parameters written as PostgreSQL array literals (issue 17, worker CPU per close).

A batch statement binds its rows as arrays and unnests them server-side (`CAST(:x AS timestamptz[])`). psycopg
dumps a Python list element by element in Python (~4.3 µs per instant, ~0.9 µs per string, measured); the
literal is built here with one join (~1.2 and ~0.2 µs) and parsed by the server's array input in C. The
statement still casts the parameter to its array type, so a value of the wrong kind is refused by PostgreSQL,
never stored as text.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal


def text_array(values: Iterable[str | None]) -> str:
    """`{"a","b\\"c",NULL}`: every element quoted, backslashes and quotes escaped (any text is safe)."""
    return "{" + ",".join("NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
                          for v in values) + "}"


def instant_array(values: Iterable[datetime | None]) -> str:
    """Aware instants in ISO 8601 (no character an array literal would need quoted)."""
    return "{" + ",".join("NULL" if v is None else _iso_aware(v) for v in values) + "}"


def number_array(values: Iterable[int | Decimal | None]) -> str:
    """Integers or decimals as `str` prints them (PostgreSQL's numeric input reads the exponent form too)."""
    return "{" + ",".join("NULL" if v is None else str(v) for v in values) + "}"


def _iso_aware(at: datetime) -> str:
    if at.tzinfo is None:
        raise ValueError(f"naive instant {at!r}: an instant is stored with its offset")
    return at.isoformat()

"""Statements longer than psycopg's conversion cache, converted once.

psycopg turns a query's ``%(name)s`` placeholders into PostgreSQL's ``$n`` form on every ``execute`` and caches
the result only for texts up to 4,096 bytes. The edge's quota writes are longer (4.3-5.2 kB), so each one was
scanned again per call: ~50 of ~72 µs of the conversion, measured, once per batch of one org (the exact path)
or per group (leases). A ``RawStatement`` does that conversion once, at import, and runs through
``psycopg.AsyncRawCursor``, which sends ``$n`` text as it is.
"""

from __future__ import annotations

import re
from typing import Any

_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


class RawStatement:
    """A statement written with ``%(name)s`` placeholders, in PostgreSQL's ``$n`` form: ``sql`` for the raw
    cursor, ``args(params)`` for its arguments in order."""

    def __init__(self, sql: str) -> None:
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match.group(1) not in names:
                names.append(match.group(1))
            return f"${names.index(match.group(1)) + 1}"

        self.sql = _PLACEHOLDER.sub(number, sql)
        if "%" in self.sql:
            raise ValueError("only %(name)s placeholders are supported")
        self._names = tuple(names)

    def args(self, params: dict[str, Any]) -> list[Any]:
        return [params[name] for name in self._names]

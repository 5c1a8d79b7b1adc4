"""`column = ANY(array)`: one bound array instead of one parameter per value (issue 17, worker CPU per close).

SQLAlchemy renders `column.in_(values)` as one placeholder per value: a batch of 5,000 closes makes a query
text of tens of kilobytes that SQLAlchemy expands and psycopg parses again on every execution (psycopg caches
only short query texts), and that PostgreSQL parses and plans anew because its text changes with the batch
size. With one array parameter the text is the same whatever the count, so both ends reuse their work
(psycopg prepares a statement run often enough). The plan is the same index scan.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY


def one_of(column: sa.ColumnElement[Any], values: Iterable[Any]) -> sa.ColumnElement[bool]:
    """`column = ANY(:values)`, the values bound as one array of the column's type."""
    return column == sa.any_(sa.bindparam(None, list(values), type_=ARRAY(column.type)))

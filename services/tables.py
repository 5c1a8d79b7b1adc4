"""Readable table cells for the CLI and the demo's summary: no raw JSON in a cell.

A mapping becomes ``key value`` pairs (``paid 1,233, void 3``; a nested one in parentheses), a list its
items separated by ``; ``, an integer gets thousands separators, a Decimal loses its trailing zeros, an
instant prints to the second, and an amount in minor units prints as money when the row names its currency.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from shared.domain.money import Money

MINOR_SUFFIX = "_minor"


def words(key: object) -> str:
    """``written_off`` -> ``written off``."""
    return str(key).replace("_", " ")


def number(value: int | float | Decimal) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}" if value != int(value) else f"{int(value):,}"
    text = f"{value.normalize():,f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def cell(value: Any) -> str:
    """One value as a table cell (see the module docstring)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float | Decimal):
        return number(value)
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, Mapping):
        parts = []
        for key, item in value.items():
            text = cell(item)
            parts.append(f"{words(key)} ({text})" if isinstance(item, Mapping | list | tuple) and item
                         else f"{words(key)} {text}".rstrip())
        return ", ".join(parts)
    if isinstance(value, Sequence):
        return "; ".join(cell(item) for item in value)
    return str(value)


def row_cells(columns: Sequence[str], row: Sequence[Any]) -> tuple[list[str], list[str]]:
    """The headers and cells of one result row: a ``*_minor`` column next to a ``currency`` column prints
    as money under its name without the suffix (``total_minor`` -> ``total``: ``USD 9.00``)."""
    values = dict(zip(columns, row, strict=True))
    currency = values.get("currency")
    headers, cells = [], []
    for column, value in values.items():
        if column.endswith(MINOR_SUFFIX) and isinstance(currency, str) and isinstance(value, int):
            headers.append(column.removesuffix(MINOR_SUFFIX))
            cells.append(Money(value, currency).format())
        else:
            headers.append(column)
            cells.append(cell(value))
    return headers, cells

"""How a usage quantity is read from an event's properties: the one parser the edge, the SDK, the worker
(through ``shared.contracts.usage_rules``) and the spend rule (``shared.domain.spend``) share.

Plain functions over JSON values; whether the number is a quantity the worker stores exactly (finite,
non-negative, bounded, at most 9 decimals) is ``shared.contracts.usage_rules.quantity_problem``.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import Final

# Every character an ASCII string can hold and still be read by Decimal (digits, sign, point, exponent,
# underscores, whitespace, and the letters of Infinity / NaN / sNaN): a string with any other ASCII
# character is certainly not a number, and skipping Decimal spares a raised exception per event.
_MAYBE_DECIMAL: Final = re.compile(r"[\s0-9+\-._eEiInNfFtTyYaAsS]*")
# How a decimal string can start (after whitespace, which Decimal and str.strip skip): a digit, a sign,
# a point, an underscore (Decimal reads "_1" as 1), or the first letter of Infinity / NaN / sNaN. Any
# other ASCII first character rules a number out at once.
DECIMAL_STARTS: Final = frozenset("0123456789+-._iInNsS")


def may_be_decimal(text: str) -> bool:
    """False when `text` is certainly not a decimal number (cheap; True means "ask Decimal")."""
    if not text:
        return False
    first = text[0]
    if first.isascii() and first not in DECIMAL_STARTS and not first.isspace():
        return False
    return not text.isascii() or _MAYBE_DECIMAL.fullmatch(text) is not None


def number_of(value: object) -> Decimal | None:
    """The number a property holds (a JSON number, or a string holding a decimal number), or None when it
    is not numeric. A float is read through its shortest repr (0.1 -> Decimal("0.1")), the value its
    producer wrote; a non-finite float is Decimal NaN / Infinity."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value)) if math.isfinite(value) else Decimal(str(value))
    if isinstance(value, str):
        if not may_be_decimal(value):
            return None
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            return None
    return None

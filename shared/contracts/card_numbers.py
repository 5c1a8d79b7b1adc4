"""What a payment card number (PAN) looks like: one rule for the HTTP edge's body guard and the usage rules.

PCI scope stays with Stripe: clients send payment method tokens (`pm_...`), never card numbers. Pure
(stdlib only) so that the edge, the producer SDK and the worker can all import it.

- `contains_pan(bytes)`: a run of 13 to 19 digits anywhere (spaces or dashes allowed between them, no
  letter or digit glued to either end) that passes the Luhn check. The edge's body guard applies it to
  whole request bodies.
- `is_card_number(text)`: the whole string is a card number written as such. Usage properties carry
  machine identifiers (millisecond timestamps, snowflake ids) of which one in ten passes Luhn by chance, so
  usage refuses only strings that look like a card and nothing else (see `is_card_number`).
"""

from __future__ import annotations

import re
from typing import Final

# NOTE: a run glued to a letter or digit on either side is part of a longer token, not a card number typed
# or pasted into a field: our own ids are hex (`sub_<32 hex>`, `cust_<24 hex>`), and about one in 450 of them
# holds a Luhn-valid run of 13-19 digits between two hex letters. Without these boundaries the guard refused
# requests naming such a subscription or customer.
_CANDIDATE: Final = re.compile(rb"(?<![0-9A-Za-z])[0-9](?:[ -]?[0-9]){12,18}(?![0-9A-Za-z])")

# A card number as people and card objects write it: groups of 4 separated by one space or one dash
# (4-4-4-4, 4-4-4-4-3, 4-4-4-1..4 for 13-19 digits), Amex's 4-6-5 and Diners' 4-6-4, or bare digits.
_GROUPED: Final = re.compile(r"[0-9]{4}([ -])[0-9]{4}\1[0-9]{4}\1[0-9]{1,4}(?:\1[0-9]{3})?"
                             r"|[0-9]{4}([ -])[0-9]{6}\2[0-9]{4,5}")
_BARE: Final = re.compile(r"[0-9]{13,19}")
# Issuer prefixes of the card networks in use (Visa, Mastercard, Amex, Discover, Diners, JCB, UnionPay,
# Maestro, Mir): a bare digit string must start with one to count. Millisecond and microsecond timestamps
# (17..., 16...) and snowflake ids (1...) do not.
_ISSUER: Final = re.compile(r"4|5[0-8]|2[2-7]|3[4-9]|30|6")


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def contains_pan(text: bytes) -> bool:
    """A Luhn-valid run of 13-19 digits (spaces or dashes between them) anywhere in `text`."""
    for match in _CANDIDATE.finditer(text):
        digits = re.sub(rb"[ -]", b"", match.group()).decode()
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            return True
    return False


def is_card_number(text: str) -> bool:
    """The whole of `text` is a card number written as such: 13-19 digits passing Luhn, either grouped
    with single spaces or dashes in a card layout (4-4-4-4 and its 13-19 digit variants, 4-6-5, 4-6-4), or
    bare digits starting with a card network's issuer prefix. Surrounding whitespace is ignored."""
    if len(text) < 13 or (not text[0].isdigit() and not text[0].isspace()):
        return False  # the common case (a model name, an id with a prefix) costs two comparisons
    text = text.strip()
    if len(text) > 23:
        return False
    if _BARE.fullmatch(text) is not None:
        return _ISSUER.match(text) is not None and luhn_valid(text)
    if _GROUPED.fullmatch(text) is None:
        return False
    digits = text.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and luhn_valid(digits)

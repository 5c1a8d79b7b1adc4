"""One quantity parser: the usage rules (edge, SDK, worker) and the spend rule read a property alike."""

from __future__ import annotations

import math
from decimal import ROUND_CEILING

import pytest

from shared.contracts import usage_rules
from shared.domain import quantity, spend
from shared.sdk import events

pytestmark = pytest.mark.unit

VALUES = [0, 7, 12.5, 0.1, 1e-30, 1e20, math.inf, -math.inf, math.nan, True, False, None, "12.01", " 3 ", "1_000",
          "-4", "NaN", "Infinity", "1e3", "llama", "", "١٢", "0x10", [1], {"a": 1}]


def test_every_reader_of_a_usage_quantity_is_the_domains_parser():
    assert usage_rules.number_of is quantity.number_of
    assert events.numeric_value is quantity.number_of


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_the_spend_rule_reads_the_number_the_usage_rules_read_rounded_up(value):
    number = quantity.number_of(value)
    if isinstance(value, int) and not isinstance(value, bool):
        expected: int | None = value
    elif number is None or not number.is_finite():
        expected = None
    else:
        expected = int(number.to_integral_value(rounding=ROUND_CEILING))
    assert spend.quantity_of(value) == expected

"""The body guards walk any document orjson parses, however deep, and the depth guard finds deep ones."""

from __future__ import annotations

import pytest

from services.ingest.body_guard import json_depth_exceeds
from services.ingest.nul import nul_fields
from services.ingest.pan import pan_fields

pytestmark = pytest.mark.unit


def _nested(depth: int, leaf: str) -> bytes:
    return ('{"a":' * depth + f'"{leaf}"' + "}" * depth).encode()


def test_a_card_number_990_levels_deep_is_found_and_named_without_recursion():
    assert pan_fields(_nested(990, "4242 4242 4242 4242")) == [".".join(["a"] * 990)]


def test_a_nul_990_levels_deep_is_found_without_recursion():
    assert nul_fields(_nested(990, "x\\u0000")) == [".".join(["a"] * 990)]


def test_flagged_paths_keep_document_order():
    assert nul_fields(b'{"b": "\\u0000", "a": [{"c": "\\u0000"}, "\\u0000"]}') == ["b", "a.0.c", "a.1"]


@pytest.mark.parametrize(("body", "deep"), [
    (_nested(32, "x"), False), (_nested(33, "x"), True), (b"[" * 2000 + b"]" * 2000, True),
    (b'{"a": [1, 2, 3], "b": {"c": {}}}', False), (b"[" * 40 + b"not json", False),
    (b'["{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{"]', False),
])
def test_the_depth_guard_counts_nesting_not_brackets_in_strings(body, deep):
    assert json_depth_exceeds(body, 32) is deep

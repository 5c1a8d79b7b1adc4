"""The relay cuts a stored bundle into its messages by the element lengths written with it, without parsing it,
and parses a bundle whose part columns are missing or do not fit."""

from __future__ import annotations

import json

from shared.adapters.postgres.outbox import bundle_messages
from shared.adapters.postgres.schema.core import MIXED_BUNDLE

# Elements as PostgreSQL stores them: each one's own text, with ", " and "]" inside strings and characters
# outside ASCII (lengths count characters, as PostgreSQL's length() does).
ELEMENTS = ['{"event_id": "e1", "type": "credits.granted", "note": "a, b], c"}',
            '{"event_id":"e2","type":"invoice.finalized","name":"Zoë – 東京"}',
            ' {"event_id": "e3", "type": "credits.expired"} ']
STORED = "[" + ", ".join(ELEMENTS) + "]"  # json_agg's form
IDS = ["e1", "e2", "e3"]
LENGTHS = [len(e) for e in ELEMENTS]
TYPES = ["credits.granted", "invoice.finalized", "credits.expired"]


def test_a_bundle_is_cut_at_its_lengths_into_each_elements_exact_text():
    assert bundle_messages(STORED, LENGTHS, IDS, None, "usage.recorded", "e1") == [
        ("e1", "usage.recorded", ELEMENTS[0]), ("e2", "usage.recorded", ELEMENTS[1]),
        ("e3", "usage.recorded", ELEMENTS[2])]


def test_a_mixed_bundle_sends_each_element_with_its_own_type():
    cut = bundle_messages(STORED, LENGTHS, IDS, TYPES, MIXED_BUNDLE, "e1")
    assert [(event_id, type_) for event_id, type_, _ in cut] == list(zip(IDS, TYPES, strict=True))
    assert [text for _, _, text in cut] == ELEMENTS


def _parsed(event_type: str) -> list[tuple[str, str, str]]:
    return [(e["event_id"], e["type"] if event_type == MIXED_BUNDLE else event_type,
             json.dumps(e, ensure_ascii=False, separators=(",", ":"))) for e in map(json.loads, ELEMENTS)]


def test_a_bundle_whose_part_columns_are_missing_or_do_not_fit_is_parsed_instead():
    assert bundle_messages(STORED, None, None, None, "usage.recorded", "e1") == _parsed("usage.recorded")
    inside = [ELEMENTS[0].index(", b"), LENGTHS[1], LENGTHS[2]]  # ends at a ", " inside a string
    assert bundle_messages(STORED, inside, IDS, None, "usage.recorded", "e1") == _parsed("usage.recorded")
    assert bundle_messages(STORED, LENGTHS[:2], IDS[:2], None, "usage.recorded", "e1") == _parsed("usage.recorded")
    assert bundle_messages(STORED, LENGTHS, IDS, None, MIXED_BUNDLE, "e1") == _parsed(MIXED_BUNDLE)
    assert bundle_messages(STORED, LENGTHS, IDS, TYPES[:2], MIXED_BUNDLE, "e1") == _parsed(MIXED_BUNDLE)
    assert bundle_messages(STORED, LENGTHS, IDS[:2], None, "usage.recorded", "e1") == _parsed("usage.recorded")


def test_a_parsed_bundle_keeps_what_orjson_would_refuse_and_gives_a_bare_element_the_rows_id_and_type():
    stored = '[{"event_id": "e1", "type": "a.b", "n": 123456789012345678901234567890}, {"n": 1}]'
    assert bundle_messages(stored, None, None, None, MIXED_BUNDLE, "row") == [
        ("e1", "a.b", '{"event_id":"e1","type":"a.b","n":123456789012345678901234567890}'),
        ("row", MIXED_BUNDLE, '{"n":1}')]

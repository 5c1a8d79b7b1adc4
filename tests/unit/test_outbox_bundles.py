"""The relay cuts a stored bundle into its messages by the element lengths written with it, without parsing it,
and parses a bundle whose lengths are missing or do not fit."""

from __future__ import annotations

import orjson

from shared.adapters.postgres.outbox import bundle_messages
from shared.adapters.postgres.schema.core import MIXED_BUNDLE

# Elements as PostgreSQL stores them: each one's own text, with ", " and "]" inside strings and characters
# outside ASCII (lengths count characters, as PostgreSQL's length() does).
ELEMENTS = ['{"event_id": "e1", "type": "credits.granted", "note": "a, b], c"}',
            '{"event_id":"e2","type":"invoice.finalized","name":"Zoë – 東京"}',
            ' {"event_id": "e3", "type": "credits.expired"} ']
STORED = "[" + ", ".join(ELEMENTS) + "]"  # json_agg's form


def test_a_bundle_is_cut_at_its_lengths_into_each_elements_exact_text():
    assert bundle_messages(STORED, [len(e) for e in ELEMENTS], ["e1", "e2", "e3"], None, "usage.recorded") == [
        ("e1", "usage.recorded", ELEMENTS[0]), ("e2", "usage.recorded", ELEMENTS[1]),
        ("e3", "usage.recorded", ELEMENTS[2])]


def test_a_mixed_bundle_sends_each_element_with_its_own_type():
    types = ["credits.granted", "invoice.finalized", "credits.expired"]
    cut = bundle_messages(STORED, [len(e) for e in ELEMENTS], ["e1", "e2", "e3"], types, MIXED_BUNDLE)
    assert [(event_id, type_) for event_id, type_, _ in cut] == list(zip(["e1", "e2", "e3"], types, strict=True))


def _parsed(event_type: str) -> list[tuple[str, str, str]]:
    return [(e["event_id"], e["type"] if event_type == MIXED_BUNDLE else event_type, orjson.dumps(e).decode())
            for e in map(orjson.loads, ELEMENTS)]


def test_a_bundle_without_lengths_or_with_lengths_that_do_not_fit_is_parsed_instead():
    ids = ["e1", "e2", "e3"]
    assert bundle_messages(STORED, None, None, None, "usage.recorded") == _parsed("usage.recorded")
    wrong = [ELEMENTS[0].index(", b"), len(ELEMENTS[1]), len(ELEMENTS[2])]  # ends at a ", " inside a string
    assert bundle_messages(STORED, wrong, ids, None, "usage.recorded") == _parsed("usage.recorded")
    short = [len(e) for e in ELEMENTS[:2]]
    assert bundle_messages(STORED, short, ids[:2], None, "usage.recorded") == _parsed("usage.recorded")
    assert bundle_messages(STORED, [len(e) for e in ELEMENTS], ids, None, MIXED_BUNDLE) == _parsed(MIXED_BUNDLE)

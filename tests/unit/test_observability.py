"""Log lines keep the fields passed with `extra=` in both formats."""

from __future__ import annotations

import logging
import sys

import orjson

from shared.observability import JsonFormatter, TextFormatter, kv


def _record(**fields: object) -> logging.LogRecord:
    record = logging.LogRecord("billing_worker.consumer", logging.WARNING, __file__, 1, "batch failed, retrying",
                               None, None)
    record.__dict__.update(fields)
    return record


def test_a_text_line_ends_with_the_records_fields() -> None:
    line = TextFormatter().format(_record(**kv(error="UniqueViolation: duplicate key", topic="commands.v1",
                                                  partition=3, offset=41, missing=None)))

    assert "WARNING billing_worker.consumer batch failed, retrying" in line
    assert line.endswith(" error=UniqueViolation: duplicate key topic=commands.v1 partition=3 offset=41")


def test_a_text_line_without_fields_is_the_message_alone() -> None:
    assert TextFormatter().format(_record()).endswith("billing_worker.consumer batch failed, retrying")


def test_a_traceback_stays_below_the_line_with_its_fields() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record(topic="commands.v1")
        record.exc_info = sys.exc_info()
    first, *rest = TextFormatter().format(record).splitlines()

    assert first.endswith("batch failed, retrying topic=commands.v1")
    assert rest[-1] == "ValueError: boom"


def test_a_json_line_carries_the_same_fields() -> None:
    line = orjson.loads(JsonFormatter().format(_record(topic="commands.v1", offset=41)))

    assert (line["msg"], line["topic"], line["offset"]) == ("batch failed, retrying", "commands.v1", 41)

"""Structured logging: one JSON object per line, carrying Kafka coordinates and business ids.

Use `log.info("invoice finalised", extra=kv(subscription_id=..., topic=..., partition=..., offset=...))`
or bind them once with `bound(logger, **fields)`.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a record was given with `extra=` (everything that is not a standard LogRecord attribute)."""
    return {k: v for k, v in record.__dict__.items() if k not in _RESERVED}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """One line of text for `log_json=False`, ending with the record's fields as ``key=value``.

    # NOTE: the plain `logging.Formatter` dropped every `extra=` field, so a text log said "batch failed,
    # retrying" without the error, topic or offset that the JSON line carries.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        # the line before any traceback, which `format` appends below it
        fields = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = super().formatMessage(record)
        return f"{line} {fields}" if fields else line


def configure_logging(level: str = "INFO", json: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("kafka").setLevel(logging.WARNING)


def kv(**fields: Any) -> dict[str, Any]:
    """Fields for `extra=`; None values are dropped so logs stay short."""
    return {k: v for k, v in fields.items() if v is not None}


class BoundLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def bound(logger: logging.Logger, **fields: Any) -> BoundLogger:
    return BoundLogger(logger, kv(**fields))

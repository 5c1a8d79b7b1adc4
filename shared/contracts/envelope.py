"""The message envelope every topic carries, and its serde.

Wire format: UTF-8 JSON object with event_id (UUID, the consumers' dedupe key), type, schema_version,
occurred_at (aware UTC, RFC 3339), producer, correlation_id and payload. Payload models per type live
next to this module; older schema versions are upcast on read (`register_upcaster`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.errors import TerminalError


class EnvelopeError(TerminalError, ValueError):
    """Bytes that are not a valid envelope: terminal for the message (it goes to the DLQ)."""


class Envelope(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    type: str = Field(min_length=1, max_length=100)
    schema_version: int = Field(default=1, ge=1)
    occurred_at: AwareDatetime
    producer: str = Field(min_length=1, max_length=100)
    correlation_id: str | None = Field(default=None, max_length=200)
    payload: dict[str, Any]

    @field_validator("occurred_at")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        try:
            return v.astimezone(UTC)
        except OverflowError:  # 9999-12-31T23:59:59-01:00: a ValueError makes it a validation error (DLQ)
            raise ValueError("has no UTC equivalent (outside years 1 to 9999 once its offset is applied)") from None

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> Envelope:
        if raw is None:
            raise EnvelopeError("empty message value")
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise EnvelopeError(f"not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise EnvelopeError("envelope must be a JSON object")
        try:
            env = cls.model_validate(data)
        except ValidationError as exc:
            raise EnvelopeError(f"invalid envelope: {exc.errors(include_url=False)}") from exc
        return upcast(env)


def new_envelope(type_: str, payload: dict[str, Any], *, producer: str, occurred_at: datetime,
                 correlation_id: str | None = None, event_id: uuid.UUID | None = None,
                 schema_version: int = 1) -> Envelope:
    return Envelope(event_id=event_id or uuid.uuid4(), type=type_, schema_version=schema_version,
                    occurred_at=occurred_at, producer=producer, correlation_id=correlation_id, payload=payload)


Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
_UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def register_upcaster(type_: str, from_version: int, fn: Upcaster) -> None:
    """Register a payload migration from `from_version` to `from_version + 1` for one message type."""
    _UPCASTERS[(type_, from_version)] = fn


def upcast(env: Envelope) -> Envelope:
    while (env.type, env.schema_version) in _UPCASTERS:
        payload = _UPCASTERS[(env.type, env.schema_version)](dict(env.payload))
        env = env.model_copy(update={"payload": payload, "schema_version": env.schema_version + 1})
    return env

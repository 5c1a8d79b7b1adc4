"""Lifecycle commands: publish on `commands.v1` keyed by subscription_id, then wait for the worker's answer.

The worker (the single writer) records an outcome per command in `command_outcomes`, keyed by the
command's envelope event_id. The edge polls that row for at most `settings.command_wait_seconds`:
`applied`/`ignored` -> the subscription as the worker now has it; `rejected` -> 409 with the domain's
reason; nothing yet -> 202 with `GET /v1/commands/{id}` to poll.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool

from services.ingest.container import Container
from shared.adapters.kafka.producer import OutgoingMessage
from shared.adapters.postgres.schema.core import command_outcomes
from shared.contracts import topics
from shared.contracts.envelope import new_envelope
from shared.contracts.messages import TYPE_OF, SubscriptionCommand

POLL_INTERVAL_SECONDS = 0.05
PRODUCER = "ingest"


@dataclass(frozen=True)
class Outcome:
    command_id: uuid.UUID
    subscription_id: str
    command_type: str
    status: str  # pending | applied | rejected | ignored
    error_code: str | None = None
    error_detail: str | None = None
    result: dict[str, Any] | None = None


async def publish_command(container: Container, command: SubscriptionCommand, *,
                          correlation_id: str | None = None, command_id: uuid.UUID | None = None) -> uuid.UUID:
    """Put the command on commands.v1 and return its id once Kafka acknowledged it."""
    now = await run_in_threadpool(container.clock.now)
    envelope = new_envelope(TYPE_OF[type(command)], command.model_dump(mode="json"), producer=PRODUCER,
                            occurred_at=now, correlation_id=correlation_id, event_id=command_id)
    await container.producer.send_async([OutgoingMessage.of(topics.COMMANDS, command.subscription_id, envelope)])
    return envelope.event_id


def read_outcome(engine: sa.Engine, command_id: uuid.UUID) -> Outcome | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(command_outcomes).where(command_outcomes.c.command_id == command_id)
                           ).one_or_none()
    if row is None:
        return None
    return Outcome(row.command_id, row.subscription_id, row.command_type, row.status, row.error_code,
                   row.error_detail, row.result)


async def wait_for_outcome(container: Container, command_id: uuid.UUID) -> Outcome | None:
    deadline = time.monotonic() + container.settings.command_wait_seconds
    while True:
        outcome = await run_in_threadpool(read_outcome, container.engine, command_id)
        if outcome is not None or time.monotonic() >= deadline:
            return outcome
        await asyncio.sleep(POLL_INTERVAL_SECONDS)

"""The outbox relay's loop outlives any failed round: a dead relay thread would stop every outgoing event."""

from __future__ import annotations

from typing import Any

import pytest

from shared.adapters.kafka.outbox_relay import OutboxRelay
from shared.errors import DeliveryError

pytestmark = pytest.mark.unit


class ScriptedRelay(OutboxRelay):
    """The real loop around scripted rounds: each item is a row count to return or an error to raise."""

    def __init__(self, script: list[Any]) -> None:
        super().__init__(engine=None, producer=None, idle_s=0.001, max_backoff_s=0.001)  # type: ignore[arg-type]
        self.script = script
        self.rounds = 0

    def publish_round(self) -> int:
        self.rounds += 1
        if not self.script:
            self._stop.set()
            return 0
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return int(step)


def test_the_relay_keeps_publishing_after_an_unexpected_error_in_one_round() -> None:
    relay = ScriptedRelay([3, ValueError("a bug in one round"), 2])
    relay.run()
    assert relay.rounds == 4 and relay.script == []


def test_the_relay_keeps_publishing_through_a_broker_outage() -> None:
    relay = ScriptedRelay([DeliveryError("broker down")] * 5 + [1])
    relay.run()
    assert relay.script == []

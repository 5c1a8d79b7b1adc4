"""Creating topics waits until the broker lists them: a service started right after saw none otherwise."""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest

from shared.adapters.kafka import admin as topic_admin
from shared.errors import InfrastructureError


class LaggingBroker:
    """An AdminClient whose metadata lists a created topic only ``lag`` listings after the creation."""

    def __init__(self, lag: int) -> None:
        self.lag = lag
        self.created: list[str] = []
        self.listings_after_creation = 0

    def list_topics(self, timeout: float) -> Any:
        if self.created:
            self.listings_after_creation += 1
        visible = self.created if self.listings_after_creation > self.lag else []
        return SimpleNamespace(topics={name: SimpleNamespace(error=None) for name in visible})

    def create_topics(self, topics: list[Any], operation_timeout: float) -> dict[str, Future[None]]:
        self.created = [t.topic for t in topics]
        done: dict[str, Future[None]] = {}
        for name in self.created:
            done[name] = Future()
            done[name].set_result(None)
        return done


def test_creating_topics_returns_only_once_the_broker_lists_every_one(monkeypatch: pytest.MonkeyPatch) -> None:
    broker = LaggingBroker(lag=3)
    monkeypatch.setattr(topic_admin, "AdminClient", lambda _config: broker)
    monkeypatch.setattr(topic_admin.time, "sleep", lambda _s: None)

    names = topic_admin.create_topics("broker:9092", prefix="t.", partitions=1)

    assert set(broker.created) == set(names)
    assert broker.listings_after_creation == 4  # three listings without them, the fourth with


def test_topics_never_listed_are_an_infrastructure_error(monkeypatch: pytest.MonkeyPatch) -> None:
    broker = LaggingBroker(lag=10**9)
    monkeypatch.setattr(topic_admin, "AdminClient", lambda _config: broker)
    clock = iter(range(0, 10**6, 5))
    monkeypatch.setattr(topic_admin.time, "monotonic", lambda: float(next(clock)))
    monkeypatch.setattr(topic_admin.time, "sleep", lambda _s: None)

    with pytest.raises(InfrastructureError, match="not listed"):
        topic_admin.create_topics("broker:9092", prefix="t.", partitions=1)

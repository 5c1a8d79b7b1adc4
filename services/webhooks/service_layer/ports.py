"""Ports of the webhook use cases. `DeliveryStoreFactory()` opens one transaction (`with stores() as s:`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Protocol

from services.webhooks.service_layer.model import AttemptResult, ClaimedDelivery, EndpointSubscription, NewDelivery


class DeliveryStore(Protocol):
    def enabled_endpoints(self) -> list[EndpointSubscription]:
        """The endpoints that receive new events now."""

    def add_deliveries(self, deliveries: Sequence[NewDelivery]) -> int:
        """Insert deliveries; one that exists (same endpoint and event) is left as it is. Returns how many
        were new."""

    def claim_due(self, now: datetime, limit: int, lease_seconds: float, per_endpoint: int) -> list[ClaimedDelivery]:
        """Lease up to `limit` deliveries to send now, at most `per_endpoint` to one endpoint: due pending
        ones under the ordering rule (`ordering.py`) and manual redeliveries, of enabled endpoints, not
        leased by another dispatcher."""

    def record_attempt(self, delivery: ClaimedDelivery, attempt_no: int, at: datetime,
                       result: AttemptResult) -> None:
        """Append one attempt to the log."""

    def mark_delivered(self, delivery: ClaimedDelivery, attempt_no: int, at: datetime,
                       result: AttemptResult) -> None: ...

    def reschedule(self, delivery: ClaimedDelivery, attempt_no: int, at: datetime, result: AttemptResult,
                   next_attempt_at: datetime) -> None: ...

    def abandon(self, delivery: ClaimedDelivery, attempt_no: int, at: datetime, result: AttemptResult) -> None: ...

    def finish_manual(self, delivery: ClaimedDelivery, attempt_no: int, at: datetime,
                      result: AttemptResult) -> None:
        """A manual redelivery was tried: clear the request; delivered when it succeeded."""

    def endpoint_succeeded(self, endpoint_id: str) -> None:
        """The endpoint answered 2xx: it is no longer failing."""

    def endpoint_failed(self, endpoint_id: str, at: datetime) -> datetime:
        """Record a failure; returns since when the endpoint has failed every attempt."""

    def disable_failing_endpoint(self, endpoint_id: str, at: datetime, message: str) -> int:
        """Disable the endpoint, abandon its pending deliveries, add a notice; returns how many abandoned."""


DeliveryStoreFactory = Callable[[], AbstractContextManager[DeliveryStore]]


class Sender(Protocol):
    def send(self, url: str, body: bytes, secrets: Sequence[str]) -> AttemptResult:
        """POST the body signed with each secret; never raises for the receiver's failures."""


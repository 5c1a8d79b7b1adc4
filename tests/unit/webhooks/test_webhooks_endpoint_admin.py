"""Webhook endpoint administration (the edge's use cases) on an in-memory store: the secret is returned once,
enabling clears the failure record, DELETE only disables, a rotation's grace, redelivery refusals; each change
writes its audit row in the same transaction, nothing on a refusal."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.ingest.problems import answer_of
from services.ingest.service_layer import webhook_endpoints as admin
from services.ingest.service_layer.webhook_endpoints import (
    Delivery,
    Endpoint,
    EndpointStore,
    NewEndpoint,
    UnknownWebhookDelivery,
    UnknownWebhookEndpoint,
    WebhookEndpointDisabled,
)

pytestmark = pytest.mark.unit
AT = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@dataclass
class State:
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    secrets: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    deliveries: dict[uuid.UUID, Delivery] = field(default_factory=dict)
    audit: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)


class MemoryStore:
    def __init__(self, state: State) -> None:
        self.state = state

    def insert(self, endpoint_id: str, secret: str, endpoint: NewEndpoint, created_by: str) -> Endpoint:
        created = Endpoint(endpoint_id, endpoint.url, list(endpoint.events), endpoint.description, endpoint.enabled,
                           None if endpoint.enabled else "api", None, None, None, created_by, AT, AT)
        self.state.endpoints[endpoint_id] = created
        self.state.secrets[endpoint_id] = (secret, None)
        return created

    def get(self, endpoint_id: str) -> Endpoint | None:
        return self.state.endpoints.get(endpoint_id)

    def endpoints_after(self, after: str | None, limit: int) -> list[Endpoint]:
        return sorted((e for k, e in self.state.endpoints.items() if after is None or k > after),
                      key=lambda e: e.endpoint_id)[:limit]

    def update(self, endpoint_id: str, changes: dict[str, Any]) -> Endpoint | None:
        found = self.state.endpoints.get(endpoint_id)
        if found is None:
            return None
        self.state.endpoints[endpoint_id] = replace(found, **changes)
        return self.state.endpoints[endpoint_id]

    def rotate(self, endpoint_id: str, secret: str, at: datetime,
               previous_expires_at: datetime | None) -> Endpoint | None:
        found = self.state.endpoints.get(endpoint_id)
        if found is None:
            return None
        old, _ = self.state.secrets[endpoint_id]
        self.state.secrets[endpoint_id] = (secret, old if previous_expires_at else None)
        return self.update(endpoint_id, {"secret_rotated_at": at, "previous_secret_expires_at": previous_expires_at})

    def deliveries(self, endpoint_id: str, status: str | None, after_seq: int | None,
                   limit: int) -> list[Delivery]:
        return []

    def delivery(self, delivery_id: uuid.UUID) -> Delivery | None:
        return self.state.deliveries.get(delivery_id)

    def request_redelivery(self, delivery: Delivery, at: datetime) -> Delivery:
        changed = replace(delivery, redeliver_requested_at=at)
        self.state.deliveries[delivery.delivery_id] = changed
        return changed

    def audit(self, actor: str, action: str, request_id: str | None, **details: Any) -> None:
        self.state.audit.append((actor, action, details))


class Stores:
    """One transaction per use: the state is copied in and kept only when the block ends without an error."""

    def __init__(self) -> None:
        self.state = State()

    @contextmanager
    def __call__(self) -> Iterator[EndpointStore]:
        working = deepcopy(self.state)
        yield MemoryStore(working)
        self.state = working


def delivery_to(endpoint_id: str, status: str = "delivered") -> Delivery:
    return Delivery(uuid.uuid4(), 1, endpoint_id, uuid.uuid4(), "invoice.paid", status, 1, AT, AT, AT, AT, 200, None,
                    None, [])


def create(stores: Stores, **fields: Any) -> tuple[Endpoint, str]:
    new = NewEndpoint(url="https://hooks.example.test/x", events=["*"], **fields)
    return admin.create_endpoint(stores, new, actor="key_admin", request_id="req-1")


def test_the_secret_is_returned_at_creation_and_the_write_is_audited() -> None:
    stores = Stores()
    created, secret = create(stores)
    assert secret.startswith("whsec_") and created.endpoint_id.startswith("we_") and created.enabled
    assert stores.state.secrets[created.endpoint_id] == (secret, None)
    assert stores.state.audit == [("key_admin", "webhook_endpoint.create",
                                   {"endpoint_id": created.endpoint_id, "url": created.url, "events": ["*"],
                                    "enabled": True})]


def test_delete_only_disables_and_enabling_again_clears_the_failure_record() -> None:
    stores = Stores()
    created, _ = create(stores)
    disabled = admin.disable_endpoint(stores, created.endpoint_id, actor="key_admin", request_id=None)
    assert (disabled.enabled, disabled.disabled_reason) == (False, "api")
    assert created.endpoint_id in stores.state.endpoints
    stores.state.endpoints[created.endpoint_id] = replace(disabled, disabled_reason="failing", failing_since=AT)
    enabled = admin.update_endpoint(stores, created.endpoint_id, {"enabled": True}, actor="key_admin",
                                    request_id=None)
    assert (enabled.enabled, enabled.disabled_reason, enabled.failing_since) == (True, None, None)
    assert [action for _, action, _ in stores.state.audit] == [
        "webhook_endpoint.create", "webhook_endpoint.disable", "webhook_endpoint.update"]


def test_a_rotation_with_a_grace_keeps_the_previous_secret_until_then() -> None:
    stores = Stores()
    created, first = create(stores)
    rotated, second = admin.rotate_secret(stores, created.endpoint_id, actor="key_admin", at=AT, request_id=None,
                                          expire_previous_after=timedelta(hours=1))
    assert second != first and rotated.previous_secret_expires_at == AT + timedelta(hours=1)
    assert stores.state.secrets[created.endpoint_id] == (second, first)
    at_once, third = admin.rotate_secret(stores, created.endpoint_id, actor="key_admin", at=AT, request_id=None)
    assert at_once.previous_secret_expires_at is None
    assert stores.state.secrets[created.endpoint_id] == (third, None)


def test_refusals_have_codes_and_answers_and_write_nothing() -> None:
    stores = Stores()
    created, _ = create(stores)
    stores.state.audit.clear()
    with pytest.raises(UnknownWebhookEndpoint) as unknown:
        admin.update_endpoint(stores, "we_nope", {"enabled": False}, actor="key_admin", request_id=None)
    with pytest.raises(UnknownWebhookDelivery) as no_delivery:
        admin.redeliver(stores, uuid.uuid4(), actor="key_admin", at=AT, request_id=None)
    delivery = delivery_to(created.endpoint_id)
    stores.state.deliveries[delivery.delivery_id] = delivery
    admin.disable_endpoint(stores, created.endpoint_id, actor="key_admin", request_id=None)
    stores.state.audit.clear()
    with pytest.raises(WebhookEndpointDisabled) as disabled:
        admin.redeliver(stores, delivery.delivery_id, actor="key_admin", at=AT, request_id=None)
    assert stores.state.audit == [] and stores.state.deliveries[delivery.delivery_id] == delivery
    answers = [answer_of(e.value) for e in (unknown, no_delivery, disabled)]
    assert [(a.status, a.slug) for a in answers if a] == [
        (404, "not-found"), (404, "not-found"), (409, "webhook-endpoint-disabled")]


def test_a_redelivery_is_requested_and_audited_with_the_event_id() -> None:
    stores = Stores()
    created, _ = create(stores)
    delivery = delivery_to(created.endpoint_id)
    stores.state.deliveries[delivery.delivery_id] = delivery
    requested = admin.redeliver(stores, delivery.delivery_id, actor="key_admin", at=AT, request_id=None)
    assert requested.redeliver_requested_at == AT and requested.event_id == delivery.event_id
    assert stores.state.audit[-1][1:] == ("webhook_delivery.redeliver", {
        "delivery_id": str(delivery.delivery_id), "endpoint_id": created.endpoint_id,
        "event_id": str(delivery.event_id)})

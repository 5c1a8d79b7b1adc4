"""Webhook endpoint administration: register (the signing secret is shown once), list, read, update,
rotate the secret, disable, the delivery log, and manual redelivery.

Each use case runs in one transaction of an `EndpointStore` together with its audit row. The request is
decoded and its fields checked (URL scheme, event names from `shared.contracts.webhook_events`) by the
route's model; the use cases refuse what needs the database (an unknown endpoint or delivery, a redelivery
to a disabled endpoint). Endpoints are never deleted, because deliveries refer to them: DELETE disables.
Delivering is the webhooks service's (`services/webhooks`); a redelivery is a request it carries out.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa

from shared.adapters.postgres.schema.edge import audit_log
from shared.adapters.postgres.schema.webhooks import (
    webhook_deliveries,
    webhook_delivery_attempts,
    webhook_endpoints,
)
from shared.adapters.webhooks.signing import new_secret
from shared.errors import RefusedError


class WebhookRefusal(RefusedError):
    code = "refused"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, code=type(self).code)


class UnknownWebhookEndpoint(WebhookRefusal):
    code = "unknown_webhook_endpoint"


class UnknownWebhookDelivery(WebhookRefusal):
    code = "unknown_webhook_delivery"


class WebhookEndpointDisabled(WebhookRefusal):
    code = "webhook_endpoint_disabled"


@dataclass(frozen=True)
class Endpoint:
    endpoint_id: str
    url: str
    events: list[str]
    description: str | None
    enabled: bool
    disabled_reason: str | None
    failing_since: datetime | None
    secret_rotated_at: datetime | None
    previous_secret_expires_at: datetime | None
    created_by: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class NewEndpoint:
    url: str
    events: Sequence[str]
    description: str | None = None
    enabled: bool = True


@dataclass(frozen=True)
class Attempt:
    attempt_no: int
    attempted_at: datetime
    manual: bool
    succeeded: bool
    status_code: int | None
    error: str | None
    duration_ms: int


@dataclass(frozen=True)
class Delivery:
    delivery_id: uuid.UUID
    seq: int
    endpoint_id: str
    event_id: uuid.UUID
    event_type: str
    status: str
    attempts: int
    enqueued_at: datetime
    next_attempt_at: datetime
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    redeliver_requested_at: datetime | None
    attempt_log: list[Attempt]


class EndpointStore(Protocol):
    def insert(self, endpoint_id: str, secret: str, endpoint: NewEndpoint, created_by: str) -> Endpoint: ...

    def get(self, endpoint_id: str) -> Endpoint | None: ...

    def endpoints_after(self, after: str | None, limit: int) -> list[Endpoint]: ...

    def update(self, endpoint_id: str, changes: dict[str, Any]) -> Endpoint | None:
        """Apply `changes` (columns) and bump updated_at; None if there is no such endpoint."""

    def rotate(self, endpoint_id: str, secret: str, at: datetime,
               previous_expires_at: datetime | None) -> Endpoint | None:
        """Replace the secret; the one replaced keeps signing until `previous_expires_at` (None: not at all)."""

    def deliveries(self, endpoint_id: str, status: str | None, after_seq: int | None,
                   limit: int) -> list[Delivery]: ...

    def delivery(self, delivery_id: uuid.UUID) -> Delivery | None: ...

    def request_redelivery(self, delivery: Delivery, at: datetime) -> Delivery: ...

    def audit(self, actor: str, action: str, request_id: str | None, **details: Any) -> None: ...


EndpointStoreFactory = Callable[[], AbstractContextManager[EndpointStore]]


def new_endpoint_id() -> str:
    return "we_" + secrets.token_hex(12)


def create_endpoint(stores: EndpointStoreFactory, endpoint: NewEndpoint, *, actor: str,
                    request_id: str | None) -> tuple[Endpoint, str]:
    """The new endpoint and its signing secret (returned here only; `rotate_secret` makes a new one)."""
    secret = new_secret()
    with stores() as store:
        created = store.insert(new_endpoint_id(), secret, endpoint, actor)
        store.audit(actor, "webhook_endpoint.create", request_id, endpoint_id=created.endpoint_id,
                    url=created.url, events=created.events, enabled=created.enabled)
    return created, secret


def endpoints_page(stores: EndpointStoreFactory, after: str | None, limit: int) -> tuple[list[Endpoint], bool]:
    with stores() as store:
        found = store.endpoints_after(after, limit + 1)
    return found[:limit], len(found) > limit


def get_endpoint(stores: EndpointStoreFactory, endpoint_id: str) -> Endpoint:
    with stores() as store:
        found = store.get(endpoint_id)
    if found is None:
        raise UnknownWebhookEndpoint(f"no webhook endpoint {endpoint_id!r}")
    return found


def update_endpoint(stores: EndpointStoreFactory, endpoint_id: str, changes: dict[str, Any], *, actor: str,
                    request_id: str | None, action: str = "webhook_endpoint.update") -> Endpoint:
    """Change url, events, description or enabled. Enabling clears the failure record (a re-enabled endpoint
    starts a new 3-day window); disabling keeps its pending deliveries, sent if it is enabled again."""
    columns = dict(changes)
    if "enabled" in columns:
        columns["disabled_reason"] = None if columns["enabled"] else "api"
        if columns["enabled"]:
            columns["failing_since"] = None
    with stores() as store:
        updated = store.update(endpoint_id, columns)
        if updated is None:
            raise UnknownWebhookEndpoint(f"no webhook endpoint {endpoint_id!r}")
        store.audit(actor, action, request_id, endpoint_id=endpoint_id,
                    changes={k: v for k, v in changes.items()})
    return updated


def disable_endpoint(stores: EndpointStoreFactory, endpoint_id: str, *, actor: str,
                     request_id: str | None) -> Endpoint:
    return update_endpoint(stores, endpoint_id, {"enabled": False}, actor=actor, request_id=request_id,
                           action="webhook_endpoint.disable")


def rotate_secret(stores: EndpointStoreFactory, endpoint_id: str, *, actor: str, at: datetime,
                  request_id: str | None, expire_previous_after: timedelta = timedelta(0)) -> tuple[Endpoint, str]:
    """A new signing secret for every delivery sent from now on. With `expire_previous_after` > 0 the old one
    signs too (a second `v1=`) until then, so receivers can switch without refusing deliveries (Stripe's
    "roll secret"); 0: it stops at once."""
    secret = new_secret()
    expires = at + expire_previous_after if expire_previous_after > timedelta(0) else None
    with stores() as store:
        updated = store.rotate(endpoint_id, secret, at, expires)
        if updated is None:
            raise UnknownWebhookEndpoint(f"no webhook endpoint {endpoint_id!r}")
        store.audit(actor, "webhook_endpoint.rotate_secret", request_id, endpoint_id=endpoint_id,
                    previous_expires_at=expires.isoformat() if expires else None)
    return updated, secret


def deliveries_page(stores: EndpointStoreFactory, endpoint_id: str, status: str | None, after_seq: int | None,
                    limit: int) -> tuple[list[Delivery], bool]:
    """The endpoint's delivery log, newest first (keyset by seq), with each delivery's attempts."""
    with stores() as store:
        if store.get(endpoint_id) is None:
            raise UnknownWebhookEndpoint(f"no webhook endpoint {endpoint_id!r}")
        found = store.deliveries(endpoint_id, status, after_seq, limit + 1)
    return found[:limit], len(found) > limit


def redeliver(stores: EndpointStoreFactory, delivery_id: uuid.UUID, *, actor: str, at: datetime,
              request_id: str | None) -> Delivery:
    """Ask for one more attempt of the same event (same id, same body, signed anew) as soon as possible.
    A pending delivery is simply made due now (it keeps its place in its subscription's order)."""
    with stores() as store:
        delivery = store.delivery(delivery_id)
        if delivery is None:
            raise UnknownWebhookDelivery(f"no webhook delivery {delivery_id}")
        endpoint = store.get(delivery.endpoint_id)
        if endpoint is None or not endpoint.enabled:
            raise WebhookEndpointDisabled(f"webhook endpoint {delivery.endpoint_id} is disabled: enable it first")
        requested = store.request_redelivery(delivery, at)
        store.audit(actor, "webhook_delivery.redeliver", request_id, delivery_id=str(delivery_id),
                    endpoint_id=delivery.endpoint_id, event_id=str(delivery.event_id))
    return requested


_ENDPOINT_COLUMNS = ("endpoint_id", "url", "events", "description", "enabled", "disabled_reason", "failing_since",
                     "secret_rotated_at", "previous_secret_expires_at", "created_by", "created_at", "updated_at")
_DELIVERY_COLUMNS = ("delivery_id", "seq", "endpoint_id", "event_id", "event_type", "status", "attempts",
                     "enqueued_at", "next_attempt_at", "last_attempt_at", "delivered_at", "last_status_code",
                     "last_error", "redeliver_requested_at")


class SqlEndpointStore:
    """`EndpointStore` over one connection in a transaction (webhook tables and the edge's audit log)."""

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn

    def insert(self, endpoint_id: str, secret: str, endpoint: NewEndpoint, created_by: str) -> Endpoint:
        row = self.conn.execute(webhook_endpoints.insert().values(
            endpoint_id=endpoint_id, url=endpoint.url, events=list(endpoint.events),
            description=endpoint.description, enabled=endpoint.enabled,
            disabled_reason=None if endpoint.enabled else "api", secret=secret, created_by=created_by)
            .returning(*_endpoint_columns())).one()
        return _endpoint(row)

    def get(self, endpoint_id: str) -> Endpoint | None:
        row = self.conn.execute(sa.select(*_endpoint_columns())
                                .where(webhook_endpoints.c.endpoint_id == endpoint_id)).one_or_none()
        return None if row is None else _endpoint(row)

    def endpoints_after(self, after: str | None, limit: int) -> list[Endpoint]:
        query = sa.select(*_endpoint_columns()).order_by(webhook_endpoints.c.endpoint_id).limit(limit)
        if after is not None:
            query = query.where(webhook_endpoints.c.endpoint_id > after)
        return [_endpoint(row) for row in self.conn.execute(query)]

    def update(self, endpoint_id: str, changes: dict[str, Any]) -> Endpoint | None:
        row = self.conn.execute(sa.update(webhook_endpoints).where(webhook_endpoints.c.endpoint_id == endpoint_id)
                                .values(**changes, updated_at=sa.func.now())
                                .returning(*_endpoint_columns())).one_or_none()
        return None if row is None else _endpoint(row)

    def rotate(self, endpoint_id: str, secret: str, at: datetime,
               previous_expires_at: datetime | None) -> Endpoint | None:
        t = webhook_endpoints
        row = self.conn.execute(sa.update(t).where(t.c.endpoint_id == endpoint_id).values(
            secret=secret, secret_rotated_at=at, updated_at=sa.func.now(),
            previous_secret=t.c.secret if previous_expires_at is not None else None,
            previous_secret_expires_at=previous_expires_at).returning(*_endpoint_columns())).one_or_none()
        return None if row is None else _endpoint(row)

    def deliveries(self, endpoint_id: str, status: str | None, after_seq: int | None,
                   limit: int) -> list[Delivery]:
        query = (sa.select(*_delivery_columns()).where(webhook_deliveries.c.endpoint_id == endpoint_id)
                 .order_by(webhook_deliveries.c.seq.desc()).limit(limit))
        if status is not None:
            query = query.where(webhook_deliveries.c.status == status)
        if after_seq is not None:
            query = query.where(webhook_deliveries.c.seq < after_seq)
        rows = self.conn.execute(query).all()
        return self._with_attempts(rows)

    def delivery(self, delivery_id: uuid.UUID) -> Delivery | None:
        rows = self.conn.execute(sa.select(*_delivery_columns())
                                 .where(webhook_deliveries.c.delivery_id == delivery_id)).all()
        found = self._with_attempts(rows)
        return found[0] if found else None

    def request_redelivery(self, delivery: Delivery, at: datetime) -> Delivery:
        values: dict[str, Any] = ({"next_attempt_at": at} if delivery.status == "pending"
                                  else {"redeliver_requested_at": at})
        self.conn.execute(sa.update(webhook_deliveries)
                          .where(webhook_deliveries.c.delivery_id == delivery.delivery_id).values(**values))
        found = self.delivery(delivery.delivery_id)
        assert found is not None  # read back in the same transaction
        return found

    def audit(self, actor: str, action: str, request_id: str | None, **details: Any) -> None:
        self.conn.execute(audit_log.insert().values(actor_key_id=actor, action=action, request_id=request_id,
                                                    details=details))

    def _with_attempts(self, rows: Sequence[Any]) -> list[Delivery]:
        ids = [row.delivery_id for row in rows]
        attempts: dict[uuid.UUID, list[Attempt]] = {i: [] for i in ids}
        if ids:
            t = webhook_delivery_attempts
            for a in self.conn.execute(sa.select(t).where(t.c.delivery_id.in_(ids))
                                       .order_by(t.c.delivery_id, t.c.attempt_no)):
                attempts[a.delivery_id].append(Attempt(a.attempt_no, a.attempted_at, a.manual, a.succeeded,
                                                       a.status_code, a.error, a.duration_ms))
        return [Delivery(**{c: getattr(row, c) for c in _DELIVERY_COLUMNS}, attempt_log=attempts[row.delivery_id])
                for row in rows]


def _endpoint_columns() -> list[sa.Column[Any]]:
    return [webhook_endpoints.c[name] for name in _ENDPOINT_COLUMNS]


def _delivery_columns() -> list[sa.Column[Any]]:
    return [webhook_deliveries.c[name] for name in _DELIVERY_COLUMNS]


def _endpoint(row: Any) -> Endpoint:
    values = {name: getattr(row, name) for name in _ENDPOINT_COLUMNS}
    values["events"] = list(values["events"])
    return Endpoint(**values)


def sql_endpoint_store(engine: sa.Engine) -> EndpointStoreFactory:
    """One `engine.begin()` transaction per use case."""

    @contextmanager
    def begin() -> Iterator[EndpointStore]:
        with engine.begin() as conn:
            yield SqlEndpointStore(conn)

    return begin

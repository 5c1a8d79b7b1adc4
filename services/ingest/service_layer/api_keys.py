"""API key administration: create (the token is shown once, only its SHA-256 is stored), list, revoke.

Each use case runs in one transaction of a `KeyStore` (`with keys() as store:`) together with its audit row.
Which scopes may be bound to an org or a producer is checked when the request is decoded (the route's
request model); the use cases add what needs the database: an org-bound key names a known customer.
Unit tests give the use cases an in-memory store (tests/unit/edge/test_api_keys.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Final, Protocol

import sqlalchemy as sa

from services.ingest.audit import record
from services.ingest.auth import Principal, hash_token, new_token
from shared.adapters.postgres.schema.core import customers
from shared.adapters.postgres.schema.edge import api_keys
from shared.errors import RefusedError


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without its hash."""

    key_id: str
    name: str
    scopes: list[str]
    org_id: str | None
    producer: str | None
    created_by: str
    created_at: datetime
    revoked_at: datetime | None = None


_KEY_FIELDS: Final = frozenset(f.name for f in fields(ApiKey))


@dataclass(frozen=True)
class NewKey:
    name: str
    scopes: Sequence[str]
    org_id: str | None = None
    producer: str | None = None


class UnknownOrganisation(RefusedError):
    """An org-bound key names no customer."""

    def __init__(self, org_id: str) -> None:
        super().__init__(f"no customer {org_id!r}", code="unknown_organisation")
        self.org_id = org_id


class KeyStore(Protocol):
    def customer_exists(self, customer_id: str) -> bool: ...

    def insert(self, key_id: str, key_hash: str, key: NewKey, created_by: str) -> ApiKey: ...

    def keys_after(self, after: str | None, limit: int) -> list[ApiKey]:
        """Keys by id after `after`, at most `limit`."""

    def revoke(self, key_id: str) -> ApiKey | None:
        """Mark the key revoked now unless it already is; the key as it stands, None if there is none."""

    def audit(self, principal: Principal, action: str, **fields: Any) -> None: ...


KeyStoreFactory = Callable[[], AbstractContextManager[KeyStore]]


def create_key(keys: KeyStoreFactory, key: NewKey, *, principal: Principal,
               request_id: str | None) -> tuple[ApiKey, str]:
    """The new key and its token (returned once, never stored)."""
    key_id, token = new_token()
    with keys() as store:
        if key.org_id is not None and not store.customer_exists(key.org_id):
            raise UnknownOrganisation(key.org_id)
        created = store.insert(key_id, hash_token(token), key, principal.key_id)
        store.audit(principal, "api_key.create", customer_id=key.org_id, request_id=request_id, key_id=key_id,
                    scopes=created.scopes)
    return created, token


def keys_page(keys: KeyStoreFactory, after: str | None, limit: int) -> tuple[list[ApiKey], bool]:
    """Up to `limit` keys by id after `after`, and whether more follow."""
    with keys() as store:
        found = store.keys_after(after, limit + 1)
    return found[:limit], len(found) > limit


def revoke_key(keys: KeyStoreFactory, key_id: str, *, principal: Principal,
               request_id: str | None) -> ApiKey | None:
    """Revoke a key (a second revocation keeps the first instant); None if there is no such key. Other edge
    processes notice within their authenticator cache's lifetime; the caller clears its own."""
    with keys() as store:
        key = store.revoke(key_id)
        if key is not None:
            store.audit(principal, "api_key.revoke", customer_id=key.org_id, request_id=request_id, key_id=key_id)
    return key


class SqlKeyStore:
    """`KeyStore` over one connection in a transaction (`api_keys`, `customers`, the audit log)."""

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn

    def customer_exists(self, customer_id: str) -> bool:
        return self.conn.execute(sa.select(customers.c.customer_id)
                                 .where(customers.c.customer_id == customer_id)).first() is not None

    def insert(self, key_id: str, key_hash: str, key: NewKey, created_by: str) -> ApiKey:
        row = self.conn.execute(api_keys.insert().values(
            key_id=key_id, key_hash=key_hash, name=key.name, scopes=sorted(set(key.scopes)), org_id=key.org_id,
            producer=key.producer, created_by=created_by).returning(api_keys)).one()
        return _key(row)

    def keys_after(self, after: str | None, limit: int) -> list[ApiKey]:
        query = sa.select(api_keys).order_by(api_keys.c.key_id).limit(limit)
        if after is not None:
            query = query.where(api_keys.c.key_id > after)
        return [_key(row) for row in self.conn.execute(query)]

    def revoke(self, key_id: str) -> ApiKey | None:
        self.conn.execute(sa.update(api_keys).where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
                          .values(revoked_at=sa.func.now()))
        row = self.conn.execute(sa.select(api_keys).where(api_keys.c.key_id == key_id)).one_or_none()
        return None if row is None else _key(row)

    def audit(self, principal: Principal, action: str, **fields: Any) -> None:
        record(self.conn, principal, action, **fields)


def _key(row: Any) -> ApiKey:
    return ApiKey(**{k: v for k, v in row._mapping.items() if k in _KEY_FIELDS})


def sql_key_store(engine: sa.Engine) -> KeyStoreFactory:
    """One `engine.begin()` transaction per use case."""

    @contextmanager
    def begin() -> Iterator[KeyStore]:
        with engine.begin() as conn:
            yield SqlKeyStore(conn)

    return begin

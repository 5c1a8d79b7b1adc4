"""API key administration without PostgreSQL: the token is returned once and only its hash is stored, an
org-bound key must name a known customer, listing pages by key id, and a revocation keeps its first instant;
each change writes its audit row in the same transaction (nothing on a refusal)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.ingest.auth import Principal, Scope, hash_token
from services.ingest.service_layer import api_keys
from services.ingest.service_layer.api_keys import ApiKey, KeyStore, KeyStoreFactory, NewKey, UnknownOrganisation

pytestmark = pytest.mark.unit

ADMIN = Principal(key_id="key_admin", scopes=frozenset({Scope.ADMIN}))
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class KeyTables:
    customers: set[str] = field(default_factory=set)
    keys: dict[str, tuple[ApiKey, str]] = field(default_factory=dict)  # key id -> (key, hash)
    audit: list[dict[str, Any]] = field(default_factory=list)
    now: datetime = T0


class FakeKeyStore:
    """`KeyStore` over a copy of `KeyTables`, written back on commit only."""

    def __init__(self, tables: KeyTables) -> None:
        self.tables = tables

    def customer_exists(self, customer_id: str) -> bool:
        return customer_id in self.tables.customers

    def insert(self, key_id: str, key_hash: str, key: NewKey, created_by: str) -> ApiKey:
        created = ApiKey(key_id=key_id, name=key.name, scopes=sorted(set(key.scopes)), org_id=key.org_id,
                         producer=key.producer, created_by=created_by, created_at=self.tables.now)
        self.tables.keys[key_id] = (created, key_hash)
        return created

    def keys_after(self, after: str | None, limit: int) -> list[ApiKey]:
        return [self.tables.keys[k][0] for k in sorted(self.tables.keys) if after is None or k > after][:limit]

    def revoke(self, key_id: str) -> ApiKey | None:
        if key_id not in self.tables.keys:
            return None
        key, key_hash = self.tables.keys[key_id]
        if key.revoked_at is None:
            key = replace(key, revoked_at=self.tables.now)
            self.tables.keys[key_id] = (key, key_hash)
        return key

    def audit(self, principal: Principal, action: str, **fields: Any) -> None:
        self.tables.audit.append({"actor_key_id": principal.key_id, "action": action, **fields})


def store_of(tables: KeyTables) -> KeyStoreFactory:
    @contextmanager
    def begin() -> Iterator[KeyStore]:
        work = deepcopy(tables)
        yield FakeKeyStore(work)
        tables.__dict__.update(work.__dict__)

    return begin


def test_a_created_key_returns_its_token_once_and_stores_only_its_hash():
    tables = KeyTables(customers={"cust_1"})
    created, token = api_keys.create_key(store_of(tables), NewKey("reader", ["read", "read"], org_id="cust_1"),
                                         principal=ADMIN, request_id="req-1")
    stored, stored_hash = tables.keys[created.key_id]
    assert stored_hash == hash_token(token) and token not in repr(tables)
    assert (stored, stored.scopes, stored.created_by) == (created, ["read"], "key_admin")
    assert tables.audit == [{"actor_key_id": "key_admin", "action": "api_key.create", "customer_id": "cust_1",
                             "request_id": "req-1", "key_id": created.key_id, "scopes": ["read"]}]


def test_a_key_bound_to_an_unknown_organisation_is_refused_and_nothing_is_written():
    tables = KeyTables()
    with pytest.raises(UnknownOrganisation) as refused:
        api_keys.create_key(store_of(tables), NewKey("reader", ["read"], org_id="cust_404"), principal=ADMIN,
                            request_id=None)
    assert (refused.value.code, refused.value.org_id) == ("unknown_organisation", "cust_404")
    assert (tables.keys, tables.audit) == ({}, [])


def test_keys_are_listed_by_id_a_page_at_a_time():
    tables = KeyTables()
    ids = sorted(api_keys.create_key(store_of(tables), NewKey(f"k{i}", ["admin"]), principal=ADMIN,
                                     request_id=None)[0].key_id for i in range(3))
    first, more = api_keys.keys_page(store_of(tables), None, 2)
    rest, more_after = api_keys.keys_page(store_of(tables), first[-1].key_id, 2)
    assert ([k.key_id for k in first], more, [k.key_id for k in rest], more_after) == (ids[:2], True, ids[2:], False)


def test_a_second_revocation_keeps_the_first_instant_and_each_is_audited():
    tables = KeyTables()
    created, _ = api_keys.create_key(store_of(tables), NewKey("ops", ["admin"]), principal=ADMIN, request_id=None)
    first = api_keys.revoke_key(store_of(tables), created.key_id, principal=ADMIN, request_id="r1")
    tables.now = T0 + timedelta(hours=1)
    again = api_keys.revoke_key(store_of(tables), created.key_id, principal=ADMIN, request_id="r2")
    assert first is not None and again is not None and first.revoked_at == again.revoked_at == T0
    assert [(a["action"], a["request_id"]) for a in tables.audit[1:]] == [("api_key.revoke", "r1"),
                                                                          ("api_key.revoke", "r2")]


def test_revoking_an_unknown_key_answers_none_and_audits_nothing():
    tables = KeyTables()
    assert api_keys.revoke_key(store_of(tables), "key_404", principal=ADMIN, request_id=None) is None
    assert tables.audit == []

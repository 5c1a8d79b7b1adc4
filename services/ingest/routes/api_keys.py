"""API key management (admin): create (the token is shown once), list, revoke."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from services.ingest.audit import record
from services.ingest.auth import Principal, Scope, hash_token, new_token, require
from services.ingest.container import Container, get_container
from services.ingest.ids import BodyId, PathId
from services.ingest.pagination import Page, decode_cursor, encode_cursor
from services.ingest.problems import PROBLEM_RESPONSES, FieldError, ProblemError
from shared.adapters.postgres.schema.core import customers
from shared.adapters.postgres.schema.edge import api_keys

router = APIRouter(tags=["api keys"])


class CreateKeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    scopes: list[Scope] = Field(min_length=1)
    org_id: BodyId | None = Field(default=None, description="the customer an ingest/read key is bound to")
    producer: str | None = Field(default=None, max_length=100,
                                 description="a producer identity (ingest keys reporting for any customer)")

    @model_validator(mode="after")
    def _binding(self) -> CreateKeyRequest:
        scopes = set(self.scopes)
        if Scope.ADMIN in scopes:
            if self.org_id or self.producer:
                raise ValueError("admin keys are not bound to an org or producer")
        elif Scope.READ in scopes and self.org_id is None:
            raise ValueError("read keys are bound to one org (org_id)")
        elif Scope.INGEST in scopes and (self.org_id is None) == (self.producer is None):
            raise ValueError("ingest keys are bound to exactly one of org_id or producer")
        if self.producer is not None and Scope.READ in scopes:
            raise ValueError("producer keys can only ingest")
        return self


class KeyView(BaseModel):
    key_id: str
    name: str
    scopes: list[str]
    org_id: str | None = None
    producer: str | None = None
    created_by: str
    created_at: datetime
    revoked_at: datetime | None = None


class CreatedKey(KeyView):
    token: str = Field(description="shown once; only its SHA-256 is stored")


def _view(row: Any) -> KeyView:
    return KeyView(**{k: v for k, v in row._mapping.items() if k in KeyView.model_fields})


@router.post("/v1/api-keys", response_model=CreatedKey, status_code=201, responses=PROBLEM_RESPONSES,
             summary="Create an API key (admin)")
async def create_key(body: CreateKeyRequest, request: Request, principal: Principal = Depends(require(Scope.ADMIN)),
                     container: Container = Depends(get_container)) -> CreatedKey:
    key_id, token = new_token()

    def insert() -> KeyView:
        with container.engine.begin() as conn:
            if body.org_id is not None and conn.execute(
                    sa.select(customers.c.customer_id).where(customers.c.customer_id == body.org_id)).first() is None:
                raise ProblemError(422, "Unknown organisation", slug="validation",
                                   errors=[FieldError(field="org_id", reason="no such customer")])
            row = conn.execute(api_keys.insert().values(
                key_id=key_id, key_hash=hash_token(token), name=body.name,
                scopes=sorted({s.value for s in body.scopes}),
                org_id=body.org_id, producer=body.producer, created_by=principal.key_id).returning(api_keys)).one()
            record(conn, principal, "api_key.create", customer_id=body.org_id,
                   request_id=request.headers.get("x-request-id"), key_id=key_id, scopes=row.scopes)
            return _view(row)

    view = await run_in_threadpool(insert)
    return CreatedKey(**view.model_dump(), token=token)


@router.get("/v1/api-keys", response_model=Page[KeyView], responses=PROBLEM_RESPONSES, summary="List API keys (admin)")
async def list_keys(limit: int = Query(50, ge=1, le=500), cursor: str | None = None,
                    _: Principal = Depends(require(Scope.ADMIN)),
                    container: Container = Depends(get_container)) -> Page[KeyView]:
    after = decode_cursor(cursor)

    def load() -> list[Any]:
        query = sa.select(api_keys).order_by(api_keys.c.key_id).limit(limit + 1)
        if after is not None:
            query = query.where(api_keys.c.key_id > after)
        with container.engine.connect() as conn:
            return list(conn.execute(query))

    rows = await run_in_threadpool(load)
    views = [_view(r) for r in rows[:limit]]
    return Page(data=views, next_cursor=encode_cursor(views[-1].key_id) if len(rows) > limit else None)


@router.post("/v1/api-keys/{key_id}/revoke", response_model=KeyView, responses=PROBLEM_RESPONSES,
             summary="Revoke an API key (admin); effective within seconds on every edge instance")
async def revoke_key(key_id: PathId, request: Request, principal: Principal = Depends(require(Scope.ADMIN)),
                     container: Container = Depends(get_container)) -> KeyView:
    def revoke() -> KeyView:
        with container.engine.begin() as conn:
            conn.execute(sa.update(api_keys).where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
                         .values(revoked_at=sa.func.now()))
            row = conn.execute(sa.select(api_keys).where(api_keys.c.key_id == key_id)).one_or_none()
            if row is None:
                raise ProblemError(404, "Unknown API key", slug="not-found")
            record(conn, principal, "api_key.revoke", customer_id=row.org_id,
                   request_id=request.headers.get("x-request-id"), key_id=key_id)
            return _view(row)

    view = await run_in_threadpool(revoke)
    request.app.state.authenticator.forget()
    return view

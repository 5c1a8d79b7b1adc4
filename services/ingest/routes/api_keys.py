"""API key management (admin): create (the token is shown once), list, revoke: decode, call
`services.ingest.service_layer.api_keys`, encode."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from services.ingest.auth import Principal, Scope, require
from services.ingest.container import Container, get_container
from services.ingest.ids import BodyId, PathId
from services.ingest.pagination import Page, decode_cursor, encode_cursor
from services.ingest.problems import PROBLEM_RESPONSES, FieldError, ProblemError
from services.ingest.service_layer import api_keys
from services.ingest.service_layer.api_keys import ApiKey, NewKey, UnknownOrganisation, sql_key_store

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


def _view(key: ApiKey) -> KeyView:
    return KeyView(**asdict(key))


@router.post("/v1/api-keys", response_model=CreatedKey, status_code=201, responses=PROBLEM_RESPONSES,
             summary="Create an API key (admin)")
async def create_key(body: CreateKeyRequest, request: Request, principal: Principal = Depends(require(Scope.ADMIN)),
                     container: Container = Depends(get_container)) -> CreatedKey:
    key = NewKey(name=body.name, scopes=[s.value for s in body.scopes], org_id=body.org_id, producer=body.producer)
    try:
        created, token = await run_in_threadpool(api_keys.create_key, sql_key_store(container.engine), key,
                                                 principal=principal, request_id=request.headers.get("x-request-id"))
    except UnknownOrganisation as exc:
        raise ProblemError(422, "Unknown organisation", slug="validation",
                           errors=[FieldError(field="org_id", reason="no such customer")]) from exc
    return CreatedKey(**_view(created).model_dump(), token=token)


@router.get("/v1/api-keys", response_model=Page[KeyView], responses=PROBLEM_RESPONSES, summary="List API keys (admin)")
async def list_keys(limit: int = Query(50, ge=1, le=500), cursor: str | None = None,
                    _: Principal = Depends(require(Scope.ADMIN)),
                    container: Container = Depends(get_container)) -> Page[KeyView]:
    found, more = await run_in_threadpool(api_keys.keys_page, sql_key_store(container.engine),
                                          decode_cursor(cursor), limit)
    views = [_view(k) for k in found]
    return Page(data=views, next_cursor=encode_cursor(views[-1].key_id) if more else None)


@router.post("/v1/api-keys/{key_id}/revoke", response_model=KeyView, responses=PROBLEM_RESPONSES,
             summary="Revoke an API key (admin); effective within seconds on every edge instance")
async def revoke_key(key_id: PathId, request: Request, principal: Principal = Depends(require(Scope.ADMIN)),
                     container: Container = Depends(get_container)) -> KeyView:
    revoked = await run_in_threadpool(api_keys.revoke_key, sql_key_store(container.engine), key_id,
                                      principal=principal, request_id=request.headers.get("x-request-id"))
    if revoked is None:
        raise ProblemError(404, "Unknown API key", slug="not-found")
    request.app.state.authenticator.forget()
    return _view(revoked)

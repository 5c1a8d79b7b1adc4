"""Outgoing webhook endpoints (admin): register (the signing secret is shown once), list, read, update,
rotate the secret, disable (DELETE), the delivery log, and manual redelivery: decode, call
`services.ingest.service_layer.webhook_endpoints`, encode."""

from __future__ import annotations

import uuid
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool

from services.ingest.auth import Principal, Scope, require
from services.ingest.container import Container, get_container
from services.ingest.ids import PathId
from services.ingest.pagination import Page, decode_cursor, encode_cursor, invalid_cursor
from services.ingest.problems import PROBLEM_RESPONSES
from services.ingest.service_layer import webhook_endpoints as use_cases
from services.ingest.service_layer.webhook_endpoints import Delivery, Endpoint, NewEndpoint, sql_endpoint_store
from shared.contracts.webhook_events import ALL_EVENTS, CATALOG, unknown_events

router = APIRouter(tags=["webhook endpoints"])
MAX_URL_LENGTH = 2048


def _check_url(url: AnyHttpUrl) -> AnyHttpUrl:
    if len(str(url)) > MAX_URL_LENGTH:
        raise ValueError(f"at most {MAX_URL_LENGTH} characters")
    if url.username or url.password:
        raise ValueError("must not carry credentials")
    return url


def _check_events(events: list[str]) -> list[str]:
    unknown = unknown_events(events)
    if unknown:
        raise ValueError(f"unknown event names {unknown[:5]} (see the catalog, or use '*')")
    if ALL_EVENTS in events and len(events) > 1:
        raise ValueError("'*' stands alone")
    if len(set(events)) != len(events):
        raise ValueError("names repeated")
    return events


class CreateEndpointRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: AnyHttpUrl = Field(description="http or https URL the events are POSTed to")
    events: list[str] = Field(min_length=1, max_length=len(CATALOG),
                              description='public event names, or ["*"] for every event')
    description: str | None = Field(default=None, max_length=500)
    enabled: bool = True

    _url = field_validator("url")(_check_url)
    _events = field_validator("events")(_check_events)


class UpdateEndpointRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: AnyHttpUrl | None = None
    events: list[str] | None = Field(default=None, min_length=1, max_length=len(CATALOG))
    description: str | None = Field(default=None, max_length=500)
    enabled: bool | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, url: AnyHttpUrl | None) -> AnyHttpUrl | None:
        return None if url is None else _check_url(url)

    @field_validator("events")
    @classmethod
    def _events(cls, events: list[str] | None) -> list[str] | None:
        return None if events is None else _check_events(events)


class EndpointView(BaseModel):
    endpoint_id: str
    url: str
    events: list[str]
    description: str | None = None
    enabled: bool
    disabled_reason: str | None = Field(default=None, description="api, or failing (every attempt failed 3 days)")
    failing_since: datetime | None = None
    secret_rotated_at: datetime | None = None
    previous_secret_expires_at: datetime | None = Field(
        default=None, description="until then deliveries are signed with the previous secret too")
    created_by: str
    created_at: datetime
    updated_at: datetime


class RotateSecretRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    expire_previous_in_seconds: int = Field(default=0, ge=0, le=86_400,
                                            description="how long the old secret keeps signing (0: not at all)")


class EndpointWithSecret(EndpointView):
    secret: str = Field(description="whsec_...: shown once; verify deliveries' OpenLedger-Signature with it")


class AttemptView(BaseModel):
    attempt_no: int
    attempted_at: datetime
    manual: bool
    succeeded: bool
    status_code: int | None = None
    error: str | None = None
    duration_ms: int


class DeliveryView(BaseModel):
    delivery_id: uuid.UUID
    endpoint_id: str
    event_id: uuid.UUID = Field(description="the `id` of the delivered body (the same on every attempt)")
    event_type: str
    status: Literal["pending", "delivered", "abandoned"]
    attempts: int
    enqueued_at: datetime
    next_attempt_at: datetime
    last_attempt_at: datetime | None = None
    delivered_at: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    redeliver_requested_at: datetime | None = None
    attempt_log: list[AttemptView]


def _view(endpoint: Endpoint) -> EndpointView:
    return EndpointView(**asdict(endpoint))


def _delivery(delivery: Delivery) -> DeliveryView:
    values: dict[str, Any] = asdict(delivery)
    values.pop("seq")
    return DeliveryView(**values)


def _request_id(request: Request) -> str | None:
    return request.headers.get("x-request-id")


@router.post("/v1/webhook-endpoints", response_model=EndpointWithSecret, status_code=201,
             responses=PROBLEM_RESPONSES, summary="Register a webhook endpoint (admin); the secret is shown once")
async def create_endpoint(body: CreateEndpointRequest, request: Request,
                          principal: Principal = Depends(require(Scope.ADMIN)),
                          container: Container = Depends(get_container)) -> EndpointWithSecret:
    new = NewEndpoint(url=str(body.url), events=body.events, description=body.description, enabled=body.enabled)
    created, secret = await run_in_threadpool(use_cases.create_endpoint, sql_endpoint_store(container.engine),
                                              new, actor=principal.key_id, request_id=_request_id(request))
    return EndpointWithSecret(**_view(created).model_dump(), secret=secret)


@router.get("/v1/webhook-endpoints", response_model=Page[EndpointView], responses=PROBLEM_RESPONSES,
            summary="List webhook endpoints (admin)")
async def list_endpoints(limit: int = Query(50, ge=1, le=500), cursor: str | None = None,
                         _: Principal = Depends(require(Scope.ADMIN)),
                         container: Container = Depends(get_container)) -> Page[EndpointView]:
    found, more = await run_in_threadpool(use_cases.endpoints_page, sql_endpoint_store(container.engine),
                                          decode_cursor(cursor), limit)
    views = [_view(e) for e in found]
    return Page(data=views, next_cursor=encode_cursor(views[-1].endpoint_id) if more else None)


@router.get("/v1/webhook-endpoints/{endpoint_id}", response_model=EndpointView, responses=PROBLEM_RESPONSES,
            summary="A webhook endpoint (admin)")
async def get_endpoint(endpoint_id: PathId, _: Principal = Depends(require(Scope.ADMIN)),
                       container: Container = Depends(get_container)) -> EndpointView:
    return _view(await run_in_threadpool(use_cases.get_endpoint, sql_endpoint_store(container.engine), endpoint_id))


@router.patch("/v1/webhook-endpoints/{endpoint_id}", response_model=EndpointView, responses=PROBLEM_RESPONSES,
              summary="Change a webhook endpoint's url, events, description or enabled (admin)")
async def update_endpoint(endpoint_id: PathId, body: UpdateEndpointRequest, request: Request,
                          principal: Principal = Depends(require(Scope.ADMIN)),
                          container: Container = Depends(get_container)) -> EndpointView:
    changes = body.model_dump(exclude_unset=True, exclude_none=True, mode="json")
    updated = await run_in_threadpool(use_cases.update_endpoint, sql_endpoint_store(container.engine), endpoint_id,
                                      changes, actor=principal.key_id, request_id=_request_id(request))
    return _view(updated)


@router.delete("/v1/webhook-endpoints/{endpoint_id}", response_model=EndpointView, responses=PROBLEM_RESPONSES,
               summary="Disable a webhook endpoint (admin); it is kept, with its delivery log")
async def disable_endpoint(endpoint_id: PathId, request: Request,
                           principal: Principal = Depends(require(Scope.ADMIN)),
                           container: Container = Depends(get_container)) -> EndpointView:
    disabled = await run_in_threadpool(use_cases.disable_endpoint, sql_endpoint_store(container.engine),
                                       endpoint_id, actor=principal.key_id, request_id=_request_id(request))
    return _view(disabled)


@router.post("/v1/webhook-endpoints/{endpoint_id}/rotate-secret", response_model=EndpointWithSecret,
             responses=PROBLEM_RESPONSES, summary="Replace a webhook endpoint's signing secret (admin); shown once")
async def rotate_secret(endpoint_id: PathId, request: Request, body: RotateSecretRequest | None = None,
                        principal: Principal = Depends(require(Scope.ADMIN)),
                        container: Container = Depends(get_container)) -> EndpointWithSecret:
    grace = timedelta(seconds=body.expire_previous_in_seconds if body else 0)
    at = await run_in_threadpool(container.clock.now)
    updated, secret = await run_in_threadpool(use_cases.rotate_secret, sql_endpoint_store(container.engine),
                                              endpoint_id, actor=principal.key_id, at=at,
                                              request_id=_request_id(request), expire_previous_after=grace)
    return EndpointWithSecret(**_view(updated).model_dump(), secret=secret)


@router.get("/v1/webhook-endpoints/{endpoint_id}/deliveries", response_model=Page[DeliveryView],
            responses=PROBLEM_RESPONSES, summary="A webhook endpoint's delivery log, newest first (admin)")
async def list_deliveries(endpoint_id: PathId, limit: int = Query(50, ge=1, le=500), cursor: str | None = None,
                          status: Literal["pending", "delivered", "abandoned"] | None = None,
                          _: Principal = Depends(require(Scope.ADMIN)),
                          container: Container = Depends(get_container)) -> Page[DeliveryView]:
    after = decode_cursor(cursor)
    if after is not None and not after.isdigit():
        raise invalid_cursor()
    found, more = await run_in_threadpool(use_cases.deliveries_page, sql_endpoint_store(container.engine),
                                          endpoint_id, status, int(after) if after else None, limit)
    return Page(data=[_delivery(d) for d in found], next_cursor=encode_cursor(str(found[-1].seq)) if more else None)


@router.post("/v1/webhook-deliveries/{delivery_id}/redeliver", response_model=DeliveryView, status_code=202,
             responses=PROBLEM_RESPONSES, summary="Send a delivery again, same event id (admin)")
async def redeliver(delivery_id: uuid.UUID, request: Request, principal: Principal = Depends(require(Scope.ADMIN)),
                    container: Container = Depends(get_container)) -> DeliveryView:
    at = await run_in_threadpool(container.clock.now)
    requested = await run_in_threadpool(use_cases.redeliver, sql_endpoint_store(container.engine), delivery_id,
                                        actor=principal.key_id, at=at, request_id=_request_id(request))
    return _delivery(requested)

"""Spend and low-credit alert settings of a subscription (issue 15, item 5). These routes only decode, call and
encode; the use cases are `services.ingest.service_layer.alerts`."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from services.ingest.auth import Principal, Scope, authorize_customer, require
from services.ingest.container import Container, get_container
from services.ingest.ids import PathId
from services.ingest.problems import PROBLEM_RESPONSES
from services.ingest.service_layer import alerts
from services.ingest.service_layer.alerts import AlertSettingsView

router = APIRouter(tags=["alerts"])
RESPONSES: dict[int | str, dict[str, Any]] = {
    **PROBLEM_RESPONSES, 404: PROBLEM_RESPONSES[409] | {"description": "Unknown subscription"}}


class AlertsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    spend_thresholds_minor: list[int] = Field(default_factory=list, max_length=20,
                                              description="usage spend in the period (minor units)")
    low_credit_balance_minor: dict[str, int] = Field(default_factory=dict, max_length=20,
                                                     description="money meter -> credit left (minor units)")


@router.put("/v1/subscriptions/{subscription_id}/alerts", response_model=AlertSettingsView,
            responses=RESPONSES | {422: PROBLEM_RESPONSES[422]},
            summary="Set the subscription's spend and low-credit alerts (replaces them)",
            description="As usage is materialised, `alert.triggered` fires when the period's usage spend (usage at "
                        "the unit price) reaches a spend threshold, and `credits.balance_low` when a money meter's "
                        "credit left falls below its threshold; each once per period and threshold (a new period "
                        "re-arms them). 422 `/problems/invalid-alert-settings` (code `invalid_alert_settings`) "
                        "names the field.")
async def set_alerts(subscription_id: PathId, body: AlertsRequest, request: Request,
                     principal: Principal = Depends(require(Scope.ADMIN)),
                     container: Container = Depends(get_container)) -> AlertSettingsView:
    return await run_in_threadpool(partial(
        alerts.set_alerts, container.engine, container.current_catalog(), subscription_id,
        body.spend_thresholds_minor, body.low_credit_balance_minor, principal=principal,
        authorize=partial(authorize_customer, principal), request_id=request.headers.get("x-request-id")))


@router.get("/v1/subscriptions/{subscription_id}/alerts", response_model=AlertSettingsView, responses=RESPONSES,
            summary="The subscription's spend and low-credit alerts")
async def get_alerts(subscription_id: PathId, principal: Principal = Depends(require(Scope.READ)),
                     container: Container = Depends(get_container)) -> AlertSettingsView:
    return await run_in_threadpool(alerts.alerts_of, container.engine, subscription_id,
                                   partial(authorize_customer, principal))

"""Report-credit endpoints (issue 7). Thin: decode and validate, resolve the org from the key, call the use
case (``services.ingest.service_layer.quota_admission`` / ``quota_admin`` / ``spend``), encode its answer or
let its refusals propagate: the problem layer (``services.ingest.problems.ANSWERS``) answers each code.

| method + path | scope | what |
|---|---|---|
| `PUT /v1/quota/orgs/{org_id}/plan` | admin | put the org on Ultimate / Enterprise / Basic / Lite (effective at once) |
| `POST /v1/quota/orgs/{org_id}/trial` | admin | start the org's trial (10 reports within 14 days) |
| `PUT /v1/quota/orgs/{org_id}/user-limit` | admin | per-user monthly limit (`null` removes it) |
| `PUT /v1/quota/orgs/{org_id}/alert-thresholds` | admin | alert percentages (default 80, 100) |
| `POST /v1/quota/orgs/{org_id}/top-ups` | admin | add reports for the current month (expire at its end) |
| `POST /v1/quota/orgs/{org_id}/report-credits` | ingest | use one credit for an enquiry |
| `GET /v1/quota/orgs/{org_id}` | read | plan, allotment, used, remaining, trial, user balance |

| `GET /v1/quota/orgs/{org_id}/spend` | read | usage tiers: included credits left, spend so far, the cap |
| `PUT /v1/quota/orgs/{org_id}/spend-cap` | admin | cap the org's pay-as-you-go spend per billing period |
| `POST /v1/quota/orgs/{org_id}/spend/authorisations` | ingest | reserve compute spend atomically |

Use a credit answers 200 with the remaining org and user balances, or a problem document whose `reason`
names why: 402 `org_limit_reached`, `trial_exhausted`, `trial_expired`, `no_plan` (buy or upgrade a plan);
429 `user_limit_reached` with `Retry-After` until the month's end (the org still has credits). A retried
enquiry id gets the first answer back (same body, header `Idempotent-Replayed: true`) and never consumes
twice; the enquiry id is the idempotency key, so no `Idempotency-Key` header is needed.

Usage tiers (compute, the `inference` meter, quantity = USD micros; ``services.ingest.service_layer.spend``):
the period's included credits (USD 0.10 free, USD 2 pro, USD 2 per seat pooled for team / enterprise,
plus promotional or paid grants) are consumed first; beyond them the free tier is refused
(`included_credits_exhausted`) and paid tiers are billed pay as you go, in arrears, up to the org's cap
(`spend_cap_reached`). An authorisation answers 200 with what is left, or 402 with the reason; it is one
atomic conditional write, idempotent on `request_id` (a retry gets the first answer, header
`Idempotent-Replayed: true`), and it is itself the usage event (billed once; the same transaction id sent
later through `/v1/ingest` is deduplicated by the worker). Usage sent through `POST /v1/ingest` or straight
to Kafka is checked against the spend the edge can *see* (materialised by the worker, authorised here, or
accepted by this process in the last second): such a burst can pass a limit by what is accepted during
one visibility latency; callers that need a hard limit authorise first.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from services.ingest.auth import Principal, Scope, authenticate, forbidden, require, resolve_org
from services.ingest.container import Container, get_container
from services.ingest.ids import BodyId, PathId, check_path_id
from services.ingest.problems import PROBLEM_JSON, PROBLEM_RESPONSES, Problem, problem_bytes, problem_type
from services.ingest.quota_spend import spend_service_of
from services.ingest.service_layer.quota_admin import QuotaService, QuotaView
from services.ingest.service_layer.quota_admission import CreditAnswer
from services.ingest.service_layer.quota_subscription import (
    follow_report_plan,
    grant_top_up,
    grant_trial,
    live_report_subscription,
)
from services.ingest.service_layer.spend import OrgSpend, SpendAnswer, SpendService
from services.ingest.service_layer.unit_of_work import sql_unit_of_work
from services.ingest.time_zones import TimeZoneName
from shared.contracts.usage_rules import properties_problem
from shared.domain.quota import QuotaDenialReason
from shared.domain.spend import SpendDenialReason, SpendSummary

IDENTIFIER = r"^[A-Za-z0-9_.:@-]{1,200}$"


router = APIRouter(prefix="/v1/quota", tags=["report credits"])


async def get_quota(request: Request) -> QuotaService:
    """The report quota's use cases the app's root opened (``services.ingest.app``). Async on purpose:
    FastAPI runs a plain-def dependency in the thread pool (one hop per request)."""
    service: QuotaService = request.app.state.quota
    return service


class SetPlan(BaseModel):
    plan: str = Field(description="Ultimate, Enterprise, Basic or Lite (or the catalog id, e.g. reports_basic)")
    timezone: TimeZoneName | None = Field(default=None, description="IANA zone of the org's calendar months; "
                                                                    "kept if omitted, UTC for a new org")
    subscription_id: BodyId | None = Field(default=None, description="key of the org's usage events")


class StartTrial(BaseModel):
    timezone: TimeZoneName | None = None


class SetUserLimit(BaseModel):
    limit: int | None = Field(ge=0, le=1_000_000, description="reports per user per month; null: no limit")


class SetThresholds(BaseModel):
    thresholds_percent: list[int] = Field(min_length=1, max_length=10)


class TopUp(BaseModel):
    reports: int = Field(ge=1, le=1_000_000)
    top_up_id: str | None = Field(default=None, pattern=IDENTIFIER,
                                  description="idempotency key of the top-up (a retry adds nothing)")


class UseCredit(BaseModel):
    user_id: str = Field(pattern=IDENTIFIER)
    enquiry_id: str = Field(pattern=IDENTIFIER)


class QuotaState(BaseModel):
    org_id: str
    plan_id: str | None
    plan_name: str | None
    plan_monthly_reports: int | None
    timezone: str
    month_start: datetime
    month_end: datetime
    top_ups: int
    allotment: int
    used: int
    remaining: int
    per_user_monthly_limit: int | None
    alert_thresholds_percent: list[int]
    on_trial: bool
    trial_started_at: datetime | None
    trial_ends_at: datetime | None
    trial_reports: int
    trial_used: int
    user_id: str | None = None
    user_used: int | None = None
    user_remaining: int | None = None

    @classmethod
    def of(cls, view: QuotaView) -> QuotaState:
        return cls(
            org_id=view.org_id, plan_id=view.plan_id, plan_name=view.plan_name,
            plan_monthly_reports=view.plan_monthly_reports, timezone=view.timezone,
            month_start=view.month.start, month_end=view.month.end, top_ups=view.top_ups,
            allotment=view.allotment, used=view.used, remaining=view.remaining,
            per_user_monthly_limit=view.per_user_monthly_limit,
            alert_thresholds_percent=list(view.alert_thresholds_percent), on_trial=view.on_trial,
            trial_started_at=view.trial_started_at, trial_ends_at=view.trial_ends_at,
            trial_reports=view.trial_reports, trial_used=view.trial_used, user_id=view.user_id,
            user_used=view.user_used, user_remaining=view.user_remaining)


class TopUpResult(BaseModel):
    applied: bool = Field(description="false when this top_up_id was applied before (nothing added now)")
    expires_at: datetime
    state: QuotaState


class CreditGranted(BaseModel):
    org_id: str
    enquiry_id: str
    user_id: str
    allowed: bool
    reason: None = None
    month_start: datetime
    month_end: datetime
    org_allotment: int
    org_remaining: int
    user_limit: int | None
    user_remaining: int | None
    on_trial: bool


class QuotaProblem(Problem):
    """A refused report: `reason` is one of org_limit_reached, user_limit_reached, trial_exhausted,
    trial_expired, no_plan."""

    reason: QuotaDenialReason
    org_id: str
    enquiry_id: str
    user_id: str
    org_remaining: int
    user_remaining: int | None


_DENIAL_STATUS = {QuotaDenialReason.USER_LIMIT_REACHED: 429}
_DENIAL_TITLE = {
    QuotaDenialReason.ORG_LIMIT_REACHED: "The organisation has used all its reports this month",
    QuotaDenialReason.USER_LIMIT_REACHED: "This user has used all their reports this month",
    QuotaDenialReason.TRIAL_EXHAUSTED: "The trial's reports are used up",
    QuotaDenialReason.TRIAL_EXPIRED: "The trial has ended",
    QuotaDenialReason.NO_PLAN: "The organisation has no report plan",
}



def credit_response(answer: CreditAnswer, now: datetime | None) -> Response:
    """200 with the balances, or the problem document of the refusal (``now`` sets 429's Retry-After)."""
    headers = {"Idempotent-Replayed": "true"} if answer.replayed else {}
    if answer.allowed:
        return Response(orjson.dumps(answer.body()), status_code=200, media_type="application/json",
                        headers=headers)
    reason = answer.reason or QuotaDenialReason.NO_PLAN
    status = _DENIAL_STATUS.get(reason, 402)
    if status == 429 and now is not None:
        headers["Retry-After"] = str(max(1, math.ceil((answer.month.end - now).total_seconds())))
    problem = QuotaProblem(
        type=problem_type(f"quota/{reason.value}"), title=_DENIAL_TITLE[reason], status=status,
        detail=f"report refused: {reason.value}", reason=reason, org_id=answer.org_id,
        enquiry_id=answer.enquiry_id, user_id=answer.user_id, org_remaining=answer.org_remaining,
        user_remaining=answer.user_remaining)
    return Response(problem_bytes(problem), status_code=status, media_type=PROBLEM_JSON,
                    headers=headers)


_CREDIT_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"model": CreditGranted, "description": "Admitted (or the replayed first answer of this enquiry)"},
    402: {"model": QuotaProblem, "description": "Refused: org_limit_reached, trial_exhausted, trial_expired "
                                                "or no_plan", "content": {PROBLEM_JSON: {}}},
    429: {"model": QuotaProblem, "description": "Refused: user_limit_reached (Retry-After: until the month "
                                                "ends)", "content": {PROBLEM_JSON: {}}},
    **PROBLEM_RESPONSES,
}


_CREDIT_SCOPES = frozenset({Scope.INGEST})
_CREDIT_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": UseCredit.model_json_schema()}}}}


class _DirectRoute(APIRoute):
    """A route documented like any other (its endpoint's signature and ``openapi_extra``) but served
    without FastAPI's per-request dependency solving: the endpoint is called with the request and the
    path parameters and returns a ``Response`` itself."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def handler(request: Request) -> Response:
            response: Response = await endpoint(request=request, **request.path_params)
            return response

        return handler


async def use_report_credit(org_id: str, request: Request) -> Response:
    # NOTE: hot path (issue 7's benchmarks). Authentication, scope check and body validation are the
    # same as the other routes' `require(...)` and pydantic body, done inline, and the route is served
    # by `_DirectRoute`: FastAPI's dependency solving costs more per request than the whole decision.
    check_path_id("org_id", org_id)
    principal = await authenticate(request)
    if not principal.has_any(_CREDIT_SCOPES):
        raise forbidden("this API key lacks the scope: ingest")
    try:
        body = UseCredit.model_validate_json(await request.body())
    except ValidationError as error:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in error.errors()]) from error
    org = resolve_org(principal, org_id)
    admission = request.app.state.quota.admission
    answer = await admission.use_credit(org, body.user_id, body.enquiry_id)
    user_refused = answer.reason is QuotaDenialReason.USER_LIMIT_REACHED
    return credit_response(answer, await admission.now() if user_refused else None)


router.add_api_route("/orgs/{org_id}/report-credits", use_report_credit, methods=["POST"],
                     responses=_CREDIT_RESPONSES, response_class=Response, openapi_extra=_CREDIT_BODY,
                     summary="Use one report credit for an enquiry", route_class_override=_DirectRoute)


@router.put("/orgs/{org_id}/plan", response_model=QuotaState, responses=PROBLEM_RESPONSES,
            summary="Set the org's report plan")
async def set_plan(org_id: PathId, body: SetPlan, principal: Annotated[Principal, Depends(require(Scope.ADMIN))],
                   quota: Annotated[QuotaService, Depends(get_quota)], request: Request,
                   container: Annotated[Container, Depends(get_container)]) -> QuotaState:
    """Also creates or changes the org's billing subscription on the plan (`follow_report_plan`)."""
    org = resolve_org(principal, org_id)
    # NOTE: the subscription and the allotment both take the plan's CURRENT version (as change-plan does), so a
    # later version of the plan (another limit, another price) never splits what is admitted from what is billed.
    plan_id = container.current_plan_id(quota.admin.plan(body.plan).id)  # an unknown plan: refused first
    catalog = await run_in_threadpool(container.current_catalog, plan_id)
    known = (body.subscription_id or await quota.admin.subscription_of(org)
             or await run_in_threadpool(live_report_subscription, container.engine, catalog, org))
    followed = await run_in_threadpool(
        follow_report_plan, sql_unit_of_work(container.engine), catalog, org, plan_id,
        known, principal=principal, now=await run_in_threadpool(container.clock.now),
        request_id=request.headers.get("x-request-id"))
    view = await quota.admin.set_plan(org, plan_id, timezone=body.timezone,
                                      subscription_id=followed.subscription_id or body.subscription_id)
    return QuotaState.of(view)


@router.post("/orgs/{org_id}/trial", response_model=QuotaState, responses=PROBLEM_RESPONSES,
             summary="Start the org's trial")
async def start_trial(org_id: PathId, body: StartTrial,
                      principal: Annotated[Principal, Depends(require(Scope.ADMIN))],
                      quota: Annotated[QuotaService, Depends(get_quota)], request: Request,
                      container: Annotated[Container, Depends(get_container)]) -> QuotaState:
    """Also unit credits of the org's report subscription, if it has one (`grant_trial`)."""
    org = resolve_org(principal, org_id)
    view = await quota.admin.start_trial(org, timezone=body.timezone)
    if view.on_trial and view.trial_ends_at is not None:
        catalog = await run_in_threadpool(container.current_catalog)
        sid = (await quota.admin.subscription_of(org)
               or await run_in_threadpool(live_report_subscription, container.engine, catalog, org))
        await run_in_threadpool(
            grant_trial, sql_unit_of_work(container.engine), org, sid, view.trial_reports, view.trial_ends_at,
            principal=principal, now=await run_in_threadpool(container.clock.now),
            request_id=request.headers.get("x-request-id"))
    return QuotaState.of(view)


@router.put("/orgs/{org_id}/user-limit", response_model=QuotaState, responses=PROBLEM_RESPONSES,
            summary="Set the per-user monthly limit")
async def set_user_limit(org_id: PathId, body: SetUserLimit,
                         principal: Annotated[Principal, Depends(require(Scope.ADMIN))],
                         quota: Annotated[QuotaService, Depends(get_quota)]) -> QuotaState:
    view = await quota.admin.set_user_limit(resolve_org(principal, org_id), body.limit)
    return QuotaState.of(view)


@router.put("/orgs/{org_id}/alert-thresholds", response_model=QuotaState, responses=PROBLEM_RESPONSES,
            summary="Set the alert thresholds (percent of the month's allotment)")
async def set_alert_thresholds(org_id: PathId, body: SetThresholds,
                               principal: Annotated[Principal, Depends(require(Scope.ADMIN))],
                               quota: Annotated[QuotaService, Depends(get_quota)]) -> QuotaState:
    view = await quota.admin.set_alert_thresholds(resolve_org(principal, org_id), body.thresholds_percent)
    return QuotaState.of(view)


@router.post("/orgs/{org_id}/top-ups", response_model=TopUpResult, responses=PROBLEM_RESPONSES,
             summary="Top up the org's reports for the current month (admin only)")
async def top_up(org_id: PathId, body: TopUp, principal: Annotated[Principal, Depends(require(Scope.ADMIN))],
                 quota: Annotated[QuotaService, Depends(get_quota)], request: Request,
                 container: Annotated[Container, Depends(get_container)]) -> TopUpResult:
    """Also a unit credit of the org's billing subscription on the ``reports`` meter (`grant_top_up`)."""
    org = resolve_org(principal, org_id)
    top_up_id = body.top_up_id or f"topup_{uuid.uuid4().hex}"
    view, applied, expires_at = await quota.admin.top_up(org, body.reports, top_up_id=top_up_id,
                                                         granted_by=principal.key_id)
    await run_in_threadpool(
        grant_top_up, sql_unit_of_work(container.engine), org, await quota.admin.subscription_of(org), body.reports,
        top_up_id, expires_at, principal=principal, now=await run_in_threadpool(container.clock.now),
        request_id=request.headers.get("x-request-id"))
    return TopUpResult(applied=applied, expires_at=expires_at, state=QuotaState.of(view))


@router.get("/orgs/{org_id}", response_model=QuotaState, responses=PROBLEM_RESPONSES,
            summary="Read the org's quota state (and one user's balance)")
async def read_quota(org_id: PathId, principal: Annotated[Principal, Depends(require(Scope.READ))],
                     quota: Annotated[QuotaService, Depends(get_quota)],
                     user_id: Annotated[str | None, Query(pattern=IDENTIFIER)] = None) -> QuotaState:
    view = await quota.admin.view(resolve_org(principal, org_id), user_id)
    return QuotaState.of(view)


# --- usage tiers: balance, cap, authorise --------------------------------------------------------------


async def get_spend(request: Request) -> SpendService:
    """The app's spend service (built by the root). Async for the same reason as ``get_quota``."""
    return spend_service_of(request)


class SpendBalance(BaseModel):
    """Money in integer minor units of `currency`; quantities in the meter's unit (USD micros)."""

    org_id: str
    subscription_id: str
    plan_id: str
    meter_id: str
    overage: str = Field(description="block: refused beyond the credits; bill: pay as you go up to the cap")
    currency: str
    period_start: datetime
    period_end: datetime
    included_credits_minor: int
    included_remaining_minor: int
    usage_cost_minor: int = Field(description="all priced usage of the period so far, rounded once")
    spend_minor: int = Field(description="pay as you go so far: priced usage beyond the included credits")
    cap_minor: int | None
    cap_remaining_minor: int | None
    used_quantity: int = Field(description="visible usage: materialised by the worker + authorised here")
    authorised_quantity: int
    limit_quantity: int | None = Field(description="usage the period may reach; null: no limit")
    remaining_quantity: int | None
    blocked: bool
    reason: SpendDenialReason | None

    @classmethod
    def of(cls, spend: OrgSpend, summary: SpendSummary | None = None) -> SpendBalance:
        summary = summary or spend.summary()
        return cls(
            org_id=spend.org_id, subscription_id=spend.subscription_id, plan_id=spend.plan_id,
            meter_id=spend.limits.meter_id, overage=spend.limits.overage.value,
            currency=spend.limits.unit_price.currency, period_start=spend.period.start,
            period_end=spend.period.end, included_credits_minor=summary.included.amount_minor,
            included_remaining_minor=summary.included_remaining.amount_minor,
            usage_cost_minor=summary.usage_cost.amount_minor, spend_minor=summary.spend.amount_minor,
            cap_minor=summary.cap.amount_minor if summary.cap is not None else None,
            cap_remaining_minor=summary.cap_remaining.amount_minor if summary.cap_remaining is not None else None,
            used_quantity=spend.visible_quantity, authorised_quantity=spend.usage.reserved,
            limit_quantity=summary.limit_quantity, remaining_quantity=summary.remaining_quantity,
            blocked=summary.blocked, reason=summary.reason)


class SetSpendCap(BaseModel):
    amount_minor: int | None = Field(ge=0, le=10**15, description="cap per billing period in minor units of "
                                                                   "the org's currency; null removes it")
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$", description="checked when given")


class Authorise(BaseModel):
    request_id: str = Field(pattern=IDENTIFIER, description="idempotency key; also the usage's transaction_id")
    quantity: int = Field(gt=0, le=10**15, description="compute to reserve, in USD micros")
    properties: dict[str, str | int | bool] = Field(default_factory=dict, max_length=20,
                                                    description="copied onto the usage event")

    @field_validator("properties")
    @classmethod
    def _usage_rules(cls, properties: dict[str, str | int | bool]) -> dict[str, str | int | bool]:
        # The authorisation *is* the usage event: what the worker would dead-letter must be refused here,
        # or the reserved spend is never billed.
        problem = properties_problem(properties)
        if problem is not None:
            raise ValueError(f"{problem.field}: {problem.reason} ({problem.code})")
        return properties


class SpendAuthorised(BaseModel):
    org_id: str
    request_id: str
    allowed: bool
    reason: None = None
    quantity: int
    period_start: datetime
    period_end: datetime
    currency: str
    limit_quantity: int | None
    remaining_quantity: int | None
    included_remaining_minor: int
    spend_minor: int
    cap_minor: int | None


class SpendProblem(Problem):
    """Refused: `reason` is included_credits_exhausted (free tier) or spend_cap_reached."""

    reason: SpendDenialReason
    org_id: str
    request_id: str
    quantity: int
    remaining_quantity: int | None


def _spend_body(answer: SpendAnswer) -> dict[str, object]:
    summary = answer.summary
    return {
        "org_id": answer.org_id, "request_id": answer.request_id, "allowed": answer.allowed, "reason": None,
        "quantity": answer.quantity, "period_start": answer.period.start.isoformat(),
        "period_end": answer.period.end.isoformat(), "currency": summary.usage_cost.currency,
        "limit_quantity": answer.limit_quantity,
        "remaining_quantity": (None if answer.limit_quantity is None
                               else max(0, answer.limit_quantity - answer.spent_quantity)),
        "included_remaining_minor": summary.included_remaining.amount_minor,
        "spend_minor": summary.spend.amount_minor,
        "cap_minor": summary.cap.amount_minor if summary.cap is not None else None,
    }


_SPEND_TITLE = {
    SpendDenialReason.INCLUDED_CREDITS_EXHAUSTED: "The included credits of this period are used up",
    SpendDenialReason.SPEND_CAP_REACHED: "The organisation's spending cap is reached",
}

_AUTHORISE_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"model": SpendAuthorised, "description": "Reserved (or the replayed first answer of this request)"},
    402: {"model": SpendProblem, "description": "Refused: included_credits_exhausted or spend_cap_reached",
          "content": {PROBLEM_JSON: {}}},
    **PROBLEM_RESPONSES,
}


@router.get("/orgs/{org_id}/spend", response_model=SpendBalance, responses=PROBLEM_RESPONSES,
            summary="Usage-tier balance: included credits left, spend so far, the cap")
async def read_spend(org_id: PathId, principal: Annotated[Principal, Depends(require(Scope.READ))],
                     spend: Annotated[SpendService, Depends(get_spend)]) -> SpendBalance:
    return SpendBalance.of(await spend.balance(resolve_org(principal, org_id)))


@router.put("/orgs/{org_id}/spend-cap", response_model=SpendBalance, responses=PROBLEM_RESPONSES,
            summary="Cap the org's pay-as-you-go spend per billing period (admin)")
async def set_spend_cap(org_id: PathId, body: SetSpendCap,
                        principal: Annotated[Principal, Depends(require(Scope.ADMIN))],
                        spend: Annotated[SpendService, Depends(get_spend)]) -> SpendBalance:
    return SpendBalance.of(await spend.set_cap(resolve_org(principal, org_id), body.amount_minor,
                                               body.currency))


@router.post("/orgs/{org_id}/spend/authorisations", responses=_AUTHORISE_RESPONSES, response_class=Response,
             summary="Reserve compute spend against the included credits and the cap (atomic)")
async def authorise_spend(org_id: PathId, body: Authorise,
                          principal: Annotated[Principal, Depends(require(Scope.INGEST))],
                          spend: Annotated[SpendService, Depends(get_spend)]) -> Response:
    answer = await spend.authorise(resolve_org(principal, org_id), body.request_id, body.quantity,
                                   body.properties)
    return spend_response(answer)


def spend_response(answer: SpendAnswer) -> Response:
    """200 with what is left, or the problem document of the refusal (also the fast path's answer)."""
    headers = {"Idempotent-Replayed": "true"} if answer.replayed else {}
    if answer.allowed:
        return Response(orjson.dumps(_spend_body(answer)), status_code=200, media_type="application/json",
                        headers=headers)
    reason = answer.reason or SpendDenialReason.SPEND_CAP_REACHED
    problem = SpendProblem(
        type=problem_type(f"quota/{reason.value}"), title=_SPEND_TITLE[reason], status=402,
        detail=f"spend refused: {reason.value}", reason=reason, org_id=answer.org_id,
        request_id=answer.request_id, quantity=answer.quantity,
        remaining_quantity=(None if answer.limit_quantity is None
                            else max(0, answer.limit_quantity - answer.spent_quantity)))
    return Response(problem_bytes(problem), status_code=402, media_type=PROBLEM_JSON)

"""`POST /v1/clock/advance`: move the simulated billing clock forward (admin; 409 on a real clock).

The advance is one UPDATE and returns at once, whatever its size. What fell due in between takes effect in
billing-time order all the same: dunning replays each case's schedule instant by instant, and the worker's
scheduler holds a subscription's period close back while something due earlier (a charge in flight, a
dunning retry or give-up) has not taken effect (see services/billing_worker/entrypoints/scheduler.py)."""

from __future__ import annotations

from datetime import datetime, timedelta

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from services.ingest.audit import record
from services.ingest.auth import Principal, Scope, require
from services.ingest.container import Container, get_container
from services.ingest.problems import PROBLEM_RESPONSES, ProblemError
from shared.adapters.clock import DatabaseClock

router = APIRouter(tags=["clock"])


class AdvanceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    days: int = Field(default=0, ge=0, le=3660)
    hours: int = Field(default=0, ge=0, le=100_000)
    seconds: int = Field(default=0, ge=0, le=10_000_000)

    @model_validator(mode="after")
    def _forward(self) -> AdvanceRequest:
        if self.delta <= timedelta(0):
            raise ValueError("advance by a positive duration")
        return self

    @property
    def delta(self) -> timedelta:
        return timedelta(days=self.days, hours=self.hours, seconds=self.seconds)


class ClockView(BaseModel):
    clock: str
    now: datetime


@router.get("/v1/clock", response_model=ClockView, responses=PROBLEM_RESPONSES, summary="The billing clock")
async def read_clock(_: Principal = Depends(require(Scope.READ)),
                     container: Container = Depends(get_container)) -> ClockView:
    return ClockView(clock=container.settings.clock, now=await run_in_threadpool(container.clock.now))


@router.post("/v1/clock/advance", response_model=ClockView, responses=PROBLEM_RESPONSES,
             summary="Advance the simulated billing clock (admin)",
             description="Returns at once. Whatever the jump, what fell due in between takes effect in "
                         "billing-time order (dunning's retries and give-up before a later period close).")
async def advance(body: AdvanceRequest, request: Request, principal: Principal = Depends(require(Scope.ADMIN)),
                  container: Container = Depends(get_container)) -> ClockView:
    clock = container.clock
    if container.settings.clock == "real" or not isinstance(clock, DatabaseClock):
        raise ProblemError(409, "Real clock", "this environment runs on the real clock", slug="clock-is-real")

    def move() -> datetime:
        now = clock.advance(body.delta)  # ClockRefusedError: answered 409 by the problem layer
        with container.engine.begin() as conn:
            record(conn, principal, "clock.advance", request_id=request.headers.get("x-request-id"),
                   seconds=int(body.delta.total_seconds()), now=now.isoformat())
        return now

    return ClockView(clock=container.settings.clock, now=await run_in_threadpool(move))

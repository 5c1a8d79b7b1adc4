"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Literal

import sqlalchemy as sa
from confluent_kafka.admin import AdminClient
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from services.ingest.container import Container, get_container

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _database_answers(engine: sa.Engine) -> bool:
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return True
    except sa.exc.SQLAlchemyError:
        return False


def _kafka_answers(admin: AdminClient) -> bool:
    try:
        admin.list_topics(timeout=2)
        return True
    except Exception:  # librdkafka raises KafkaException or a timeout; both mean "not ready"
        return False


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, bool] = Field(description="each dependency: true when it answers (postgres, kafka)")


@router.get("/readyz", summary="Readiness: Kafka and PostgreSQL reachable", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "A dependency is down: `checks` names which"}})
async def readyz(request: Request, container: Container = Depends(get_container)) -> JSONResponse:
    admin: AdminClient | None = getattr(request.app.state, "kafka_admin", None)
    if admin is None:
        admin = AdminClient(container.settings.kafka_admin_config())
        request.app.state.kafka_admin = admin
    checks = {"postgres": await run_in_threadpool(_database_answers, container.engine),
              "kafka": await run_in_threadpool(_kafka_answers, admin)}
    ready = all(checks.values())
    return JSONResponse({"status": "ready" if ready else "not_ready", "checks": checks},
                        status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

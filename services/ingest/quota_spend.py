"""Glue between the HTTP edge and the usage-tier spend use cases (``services.ingest.service_layer.spend``):
the app's one ``SpendService`` and the spend check ``POST /v1/ingest`` runs once per batch, answered in the
route's terms (a reason and a ``FieldError``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi import Request

from services.ingest.container import Container
from services.ingest.directory import Route
from services.ingest.problems import OUTAGE_ERRORS, FieldError, is_outage
from services.ingest.service_layer.spend import SpendCheck, SpendService


def _is_outage(error: BaseException) -> bool:
    """The edge's outage rule, for the errors it answers 503 (anything else is raised)."""
    return isinstance(error, OUTAGE_ERRORS) and is_outage(error)


def spend_service_of(app_state: Any, container: Container) -> SpendService:
    """The app's spend service (one per app, so the gate's cache is shared by every request)."""
    service: SpendService | None = getattr(app_state, "spend", None)
    if service is None:
        service = SpendService(container.engine, container.clock, container.catalog, _is_outage)
        app_state.spend = service
    return service


@dataclass(frozen=True, slots=True)
class SpendVerdicts:
    """``refuse(route, event)``: (reason, field error) when the event would take its org past its limit."""

    check: SpendCheck

    def refuse(self, route: Route, event: Any) -> tuple[str, FieldError] | None:
        if not self.check.states:
            return None  # no limited org in the batch: the common case, per event of /v1/ingest
        refusal = self.check.refuse(route.customer_id, event)
        if refusal is None:
            return None
        return refusal.reason.value, FieldError(field=refusal.field, reason=refusal.detail)


async def check_spend(request: Request, routes: Mapping[str, Route], now: datetime) -> SpendVerdicts:
    """For ``POST /v1/ingest``: the per-event spend verdicts of one batch (see ``SpendCheck.refuse``)."""
    container: Container = request.app.state.container
    return SpendVerdicts(await spend_service_of(request.app.state, container).gate.check(routes.values(), now))

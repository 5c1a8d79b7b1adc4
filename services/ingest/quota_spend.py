"""Glue between the HTTP edge and the usage-tier spend use cases (``services.ingest.service_layer.spend``):
the app's one ``SpendService`` (built by the composition root, ``bootstrap.build_edge_services``) and the
spend check ``POST /v1/ingest`` runs once per batch, answered in the route's terms (a reason and a
``FieldError``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi import Request

from services.ingest.directory import Route
from services.ingest.problems import FieldError
from services.ingest.service_layer.spend import SpendService
from services.ingest.service_layer.spend_gate import SpendCheck


def spend_service_of(request: Request) -> SpendService:
    """The app's spend service (one per app, so the gate's cache is shared by every request)."""
    service: SpendService = request.app.state.spend
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
    return SpendVerdicts(await spend_service_of(request).gate.check(routes.values(), now))

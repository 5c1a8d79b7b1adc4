"""Metronome's usage calls: `POST /v1/ingest` (the native ingest use case: it already takes Metronome's body;
an event's `customer_id` may be a customer id or one of its ingest aliases)."""

from __future__ import annotations

from fastapi import APIRouter

from services.ingest.problems import PROBLEM_RESPONSES
from services.ingest.routes import ingest as native_ingest

router = APIRouter(tags=["metronome"])
_BATCH_SCHEMA = {"type": "array", "minItems": 1, "maxItems": 1000,
                 "items": {"$ref": "#/components/schemas/UsageEvent"}}

router.add_api_route("/v1/ingest", native_ingest.ingest, methods=["POST"], response_model=native_ingest.IngestResult,
                     responses=PROBLEM_RESPONSES, summary="Metronome: ingest usage events (1..1000)",
                     operation_id="metronome_ingest",
                     openapi_extra={"requestBody": {"required": True, "content": {
                         "application/json": {"schema": _BATCH_SCHEMA}}}})

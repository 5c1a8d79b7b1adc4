"""The Metronome-compatible surface, mounted under `/metronome`: the official SDK is used as
`metronome.Metronome(bearer_token=<an API key of ours>, base_url="http://<edge>/metronome")` and every path
under the prefix is Metronome's own (`/v1/customers`, `/v1/usage`, ...). The native API keeps `/v1/...`
with its own shapes.

One module per Metronome resource; each decodes Metronome's request, calls our use cases
(`services.ingest.service_layer`) and answers Metronome's shape (translations: `services.ingest.metronome`).
Authentication is the native one (`Authorization: Bearer <api key>`; read scope for GETs and list or query
POSTs, admin for writes, ingest for `/v1/ingest`); errors are rewritten for the SDK by
`services.ingest.problems.MetronomeProblemMiddleware`.
"""

from __future__ import annotations

from fastapi import APIRouter

from services.ingest.metronome.errors import PREFIX
from services.ingest.problems import PROBLEM_RESPONSES
from services.ingest.routes.metronome import (
    alerts,
    billable_metrics,
    contracts,
    credits,
    customers,
    invoices,
    pricing,
    usage,
)

# NOTE: Metronome answers an invalid request with 400 (our 422s are 400 here: `problems.metronome_problem`), and
# its calls name ids in POST bodies (`/v1/customers/archive {id}`): every operation may answer 400 and 404.
router = APIRouter(prefix=PREFIX, responses={
    400: PROBLEM_RESPONSES[422] | {"description": "Invalid request (Metronome's 400)"},
    404: PROBLEM_RESPONSES[422] | {"description": "Unknown id (in the path or the body)"}})
for _resource in (usage, customers, pricing, contracts, credits, billable_metrics, invoices, alerts):
    router.include_router(_resource.router)

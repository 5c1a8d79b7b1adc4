"""The OpenAPI document declares every status an operation can answer (`schemathesis --checks all`).

Routes declare what is theirs (201/200 of an idempotent create, 202 of a command, 402/429 of a quota,
400 of a webhook); the statuses that come from the edge's shared layers are added here, one rule each,
from what an operation is, so no route can forget them:

| status | from | operations |
|---|---|---|
| 401, 403 | `auth.require` | every operation but the public ones (health, metrics, Stripe webhooks) |
| 404 | the route's look-up | every operation with a path parameter |
| 409 | `idempotency` (a retry while the first is in flight) | every POST |
| 413 | `limits.BodyLimitMiddleware` | every operation with a body |
| 422 | validation, the NUL / depth / card-number guards, the id bound | every operation but health and metrics |
| 503 | `problems` (PostgreSQL or Kafka down), with `Retry-After` | every operation that needs one of them |

Every error is `application/problem+json` (a `Problem`, or the route's subclass of it such as
`QuotaProblem`), never `application/json`.
"""

from __future__ import annotations

from typing import Any, Final

from services.ingest.problems import PROBLEM_JSON, Problem

PROBLEM_REF: Final = {"$ref": "#/components/schemas/Problem"}
# Paths that need no API key, and those that need neither PostgreSQL nor Kafka (so never 422 or 503 either).
PUBLIC_PATHS: Final = frozenset({"/healthz", "/readyz", "/metrics", "/v1/webhooks/stripe"})
NO_DEPENDENCY_PATHS: Final = frozenset({"/healthz", "/metrics"})
_BODY_METHODS: Final = frozenset({"post", "put", "patch"})
_DESCRIPTIONS: Final = {
    401: "Missing, unknown or revoked API key", 403: "The key lacks the scope, or names another organisation",
    404: "No such resource", 409: "A request with this Idempotency-Key is still in progress",
    413: "Request body too large", 422: "Validation failed (the fields are named in `errors`)",
    503: "PostgreSQL or Kafka unavailable: retry after `Retry-After` seconds (same Idempotency-Key)",
}


def shared_statuses(path: str, method: str) -> list[int]:
    """The statuses the edge's shared layers can answer on this operation (see the module docstring)."""
    if path in NO_DEPENDENCY_PATHS:
        return []
    statuses = [422, 503]
    if path not in PUBLIC_PATHS:
        statuses += [401, 403]
    if "{" in path:
        statuses.append(404)
    if method in _BODY_METHODS:
        statuses.append(413)
    if method == "post" and path not in PUBLIC_PATHS:
        statuses.append(409)
    return sorted(statuses)


SECURITY_SCHEMES: Final = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer <api key>`"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}


def complete(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the shared statuses to every operation, make every error response problem+json, and declare
    the API key on every operation that needs one."""
    schema.setdefault("components", {}).setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
    components = schema["components"].setdefault("schemas", {})
    for name, definition in Problem.model_json_schema(ref_template="#/components/schemas/{model}").pop(
            "$defs", {}).items():
        components.setdefault(name, definition)
    components.setdefault("Problem", {k: v for k, v in Problem.model_json_schema(
        ref_template="#/components/schemas/{model}").items() if k != "$defs"})
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if path not in PUBLIC_PATHS:
                operation["security"] = [{name: []} for name in SECURITY_SCHEMES]
            responses: dict[str, Any] = operation.setdefault("responses", {})
            for shared in shared_statuses(path, method):
                responses.setdefault(str(shared), {"description": _DESCRIPTIONS[shared]})
            for status, response in responses.items():
                if not status.isdigit() or int(status) < 400 or path == "/readyz":
                    continue
                content = response.get("content") or {}
                declared = next((c["schema"] for c in content.values() if c.get("schema")), PROBLEM_REF)
                response["content"] = {PROBLEM_JSON: {"schema": declared}}
                if status == "503":
                    response.setdefault("headers", {})["Retry-After"] = {
                        "description": "seconds to wait before retrying", "schema": {"type": "integer"}}
    return schema

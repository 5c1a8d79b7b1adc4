"""The edge's audit trail: who (which API key) did what, when, to which customer. Append-only."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from services.ingest.auth import Principal
from shared.adapters.postgres.schema.edge import audit_log


def audit_row(principal: Principal, action: str, *, customer_id: str | None = None,
              subscription_id: str | None = None, request_id: str | None = None,
              **details: Any) -> dict[str, Any]:
    return {"actor_key_id": principal.key_id, "action": action, "customer_id": customer_id,
            "subscription_id": subscription_id, "request_id": request_id, "details": details}


def record(conn: sa.Connection, principal: Principal, action: str, **fields: Any) -> None:
    """Append one audit row in the caller's transaction (so the trail and the change commit together)."""
    conn.execute(audit_log.insert().values(**audit_row(principal, action, **fields)))

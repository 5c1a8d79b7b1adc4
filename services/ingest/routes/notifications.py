"""`GET /v1/notifications`: what the dunning service told customers, newest first (cursor pagination).

Admin keys see every customer's notifications (or one, with `customer_id`); an org-bound read key sees
only its own org's, whatever it asks for (another `customer_id` -> 403). The query is the dunning area's
read side (`shared.adapters.notify.history`); the edge only authorises and pages.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from starlette.concurrency import run_in_threadpool

from services.ingest.auth import Principal, Scope, forbidden, require, resolve_org
from services.ingest.container import Container, get_container
from services.ingest.ids import MAX_ID_LENGTH
from services.ingest.pagination import Page, decode_int_cursor, encode_cursor, invalid_cursor
from services.ingest.problems import PROBLEM_RESPONSES
from services.ingest.views import NotificationView
from shared.adapters.notify.history import MAX_PAGE, InvalidCursorError, NotificationPage, list_notifications

router = APIRouter(tags=["reads"])


@router.get("/v1/notifications", response_model=Page[NotificationView], responses=PROBLEM_RESPONSES,
            summary="Notifications sent to customers (dunning notices), newest first")
async def notifications(customer_id: Annotated[str | None, Query(max_length=MAX_ID_LENGTH)] = None,
                        limit: int = Query(50, ge=1, le=MAX_PAGE),
                        cursor: str | None = None, principal: Principal = Depends(require(Scope.READ)),
                        container: Container = Depends(get_container)) -> Page[NotificationView]:
    if principal.is_admin:
        scope = customer_id
    elif principal.org_id is not None:
        scope = resolve_org(principal, customer_id)
    else:
        raise forbidden("only admin keys and organisation read keys may list notifications")
    after = decode_int_cursor(cursor)

    def load() -> NotificationPage:
        with container.engine.connect() as conn:
            return list_notifications(conn, customer_id=scope, cursor=None if after is None else str(after),
                                      limit=limit)

    try:
        page = await run_in_threadpool(load)
    except InvalidCursorError as exc:
        raise invalid_cursor() from exc
    views = [NotificationView(notification_id=str(n.notification_id), customer_id=n.customer_id,
                              subscription_id=n.subscription_id, invoice_id=n.invoice_id, kind=n.kind,
                              channel=n.channel, recipient=n.recipient, subject=n.subject, decided_at=n.decided_at,
                              status=n.status, attempts=n.attempts, delivered_at=n.delivered_at,
                              last_error=n.last_error, data=n.data) for n in page.items]
    return Page(data=views, next_cursor=encode_cursor(page.next_cursor) if page.next_cursor else None)

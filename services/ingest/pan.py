"""Refuse anything that looks like a payment card number (PAN) before it is parsed, logged or stored.

PCI scope stays with Stripe: clients send payment method tokens (`pm_...`), never card numbers. A run of
13 to 19 digits (spaces or dashes allowed between them, no letter or digit glued to either end) that passes
the Luhn check, anywhere in a request body, gets 422 naming the field but never echoing the value; the body
is then dropped. The detector itself (`contains_pan`, Luhn) is `shared.contracts.card_numbers`, shared with
the usage rules.

# NOTE: usage ingest (`/v1/ingest`) and Stripe webhooks are exempt. Usage carries machine identifiers
# (snowflake ids, millisecond timestamps of 13 digits) of which one in ten passes Luhn by chance; the usage
# rules refuse, per event, a property that is a card number written as such
# (`shared.contracts.card_numbers.is_card_number`). Stripe's own payloads contain no PAN.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from services.ingest.body_guard import flagged_paths, is_guarded, read_body, replaying, send_problem
from services.ingest.problems import FieldError, Problem, problem_type
from shared.contracts.card_numbers import contains_pan, luhn_valid

__all__ = ["PanGuardMiddleware", "contains_pan", "luhn_valid", "pan_fields"]


def _no_key(_: str) -> bool:
    return False


def _holds_pan(value: Any) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool) and contains_pan(str(value).encode())


def pan_fields(body: bytes) -> list[str]:
    """The dotted paths of fields holding a card-number lookalike ('body' if the body is not JSON)."""
    if not contains_pan(body):
        return []
    try:
        return list(flagged_paths(orjson.loads(body), _no_key, _holds_pan)) or ["body"]
    except orjson.JSONDecodeError:
        return ["body"]


class PanGuardMiddleware:
    def __init__(self, app: ASGIApp, *, exempt_paths: frozenset[str]) -> None:
        self.app = app
        self.exempt_paths = exempt_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_guarded(scope, self.exempt_paths):
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        fields = pan_fields(body)
        if fields:
            del body  # never logged, never stored: the card number goes no further than this check
            await send_problem(send, Problem(
                type=problem_type("card-number-refused"), title="Card number refused", status=422,
                detail="send a Stripe payment method token (pm_...), never a card number",
                errors=[FieldError(field=f, reason="looks like a payment card number") for f in fields]))
            return
        await self.app(scope, replaying(body, receive), send)

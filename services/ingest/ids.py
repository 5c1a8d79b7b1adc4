"""The one length bound of every identifier a request names (path parameters and body fields).

PostgreSQL refuses an index entry larger than about 2.7 kB; an id of 10,000 characters reached an insert
and its "index row size exceeds" error (an OperationalError, taken for an outage) became a 503 "retry".
Every id the edge accepts is therefore bounded here, once, and a longer one is a 422 naming the field.
"""

from __future__ import annotations

from typing import Annotated, Final

from fastapi import Path
from pydantic import AfterValidator, Field

from services.ingest.problems import FieldError, ProblemError
from shared.domain.money import MINOR_UNITS

# NOTE: 200 characters (at most 800 bytes of UTF-8) is far below the index limit and above every id we
# mint (`sub_<32 hex>`) or accept from callers (external ids, aliases and usage customer ids: 128).
MAX_ID_LENGTH: Final = 200
_DESCRIPTION = f"an identifier, 1 to {MAX_ID_LENGTH} characters"

PathId = Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH, description=_DESCRIPTION)]
BodyId = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH, description=_DESCRIPTION)]
# A Stripe payment method token (never card data): stored with the customer and sent to Stripe.
PaymentMethodId = Annotated[str, Field(pattern=r"^pm_[A-Za-z0-9_]+$", max_length=MAX_ID_LENGTH)]


def _known_currency(code: str) -> str:
    if code not in MINOR_UNITS:
        raise ValueError("not an ISO 4217 currency code this engine bills in")
    return code


# NOTE: the shape alone let `AAA` through to the money code, which refuses it as a bug would (a 500).
CurrencyCode = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, e.g. USD"),
                         AfterValidator(_known_currency)]


def check_path_id(name: str, value: str) -> str:
    """For routes served without FastAPI's parameter validation (`quota._DirectRoute`): the same bound."""
    if not 1 <= len(value) <= MAX_ID_LENGTH:
        raise ProblemError(422, "Request validation failed", "one or more fields are invalid",
                           slug="validation", errors=[FieldError(field=name, reason=_DESCRIPTION)])
    return value

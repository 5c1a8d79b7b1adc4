"""API keys and authorisation for the edge.

How to use (for route authors, e.g. the quota routes)::

    from fastapi import APIRouter, Depends
    from services.ingest.auth import Principal, Scope, require, resolve_org
    from services.ingest.container import Container
    from services.ingest.problems import FieldError, ProblemError

    @router.post("/v1/orgs/{org_id}/reports")
    async def use_report(org_id: str, principal: Principal = Depends(require(Scope.INGEST)),
                         container: Container = Depends(get_container)) -> ...:
        org = resolve_org(principal, org_id)   # 403 if an org-bound key names another org
        ...

- `require(*scopes)` is a dependency: 401 (problem+json, `WWW-Authenticate: Bearer`) when the key is
  missing, unknown or revoked; 403 when the key has none of `scopes`. `admin` satisfies every scope.
- `resolve_org(principal, requested)` is the only way to obtain the org a request acts on: for an
  org-bound key it is the key's org (a different `requested` org -> 403); an admin key or a producer key
  must name one (`requested`, from the path or query, never trusted for org-bound keys).
- `principal.key_id` identifies the caller (idempotency scope, audit trail `actor_key_id`).
- Keys are presented as `Authorization: Bearer <token>` or `X-API-Key: <token>`.

Storage: only `sha256(token)` is stored. The token carries 256 random bits, so a slow password hash would
add latency to every request without making a brute-force search any more feasible than it already is not;
a leaked table reveals no usable key. The bootstrap admin key comes from `settings.admin_api_key`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import sqlalchemy as sa
from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from services.ingest.last_known import LastKnownCache
from services.ingest.problems import ProblemError
from shared.adapters.postgres.schema.edge import api_keys

TOKEN_PREFIX = "bk_"
BOOTSTRAP_ADMIN_KEY_ID = "admin-bootstrap"
# NOTE: authentication results are cached this long per process; a revoked key stops working within it.
CACHE_TTL_SECONDS = 5.0


class Scope(StrEnum):
    INGEST = "ingest"  # usage only; bound to one org or to a producer identity
    READ = "read"  # reads of one org
    ADMIN = "admin"  # everything, any org


@dataclass(frozen=True)
class Principal:
    key_id: str
    scopes: frozenset[Scope]
    org_id: str | None = None
    producer: str | None = None

    @property
    def is_admin(self) -> bool:
        return Scope.ADMIN in self.scopes

    def has_any(self, scopes: Iterable[Scope]) -> bool:
        return self.is_admin or any(s in self.scopes for s in scopes)

    def may_act_for(self, customer_id: str) -> bool:
        """Admin keys and producer ingest keys act for any customer; org-bound keys only for their own."""
        if self.is_admin:
            return True
        if self.org_id is not None:
            return self.org_id == customer_id
        return self.producer is not None and Scope.INGEST in self.scopes


_BOOTSTRAP_ADMIN = Principal(BOOTSTRAP_ADMIN_KEY_ID, frozenset({Scope.ADMIN}))


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh (key_id, token); the token is shown once to its creator and never stored."""
    key_id = f"key_{secrets.token_hex(8)}"
    return key_id, f"{TOKEN_PREFIX}{secrets.token_urlsafe(32)}"


def forbidden(detail: str) -> ProblemError:
    return ProblemError(403, "Forbidden", detail, slug="forbidden")


def unauthorized(detail: str) -> ProblemError:
    return ProblemError(401, "Unauthorized", detail, slug="unauthorized", headers={"WWW-Authenticate": "Bearer"})


def resolve_org(principal: Principal, requested: str | None) -> str:
    """The org (customer id) a request acts on: an org-bound key's own org, never one from the body."""
    if principal.org_id is not None and not principal.is_admin:
        if requested is not None and requested != principal.org_id:
            raise forbidden("this API key belongs to another organisation")
        return principal.org_id
    if requested is None:
        raise ProblemError(422, "Organisation required", "this key is not bound to an organisation: name one",
                           slug="org-required")
    return requested


def authorize_customer(principal: Principal, customer_id: str) -> None:
    """403 unless the principal may act for (or read) this customer."""
    if not principal.may_act_for(customer_id):
        raise forbidden("this API key belongs to another organisation")


@dataclass
class Authenticator:
    """Resolves presented tokens to principals (bootstrap admin key, then the `api_keys` table).

    Answers are cached per process (`CACHE_TTL_SECONDS`); while PostgreSQL is down, keys read in the last
    `last_known.STALE_FOR_SECONDS` keep working (`services.ingest.last_known`), so known producers keep
    sending usage through an outage."""

    engine: sa.Engine
    admin_token: str
    _cache: LastKnownCache[str, Principal | None] = field(
        default_factory=lambda: LastKnownCache("api-keys", CACHE_TTL_SECONDS, max_entries=10_000))

    def known(self, token: str) -> tuple[bool, Principal | None]:
        """(True, principal) when the answer is known without a query (bootstrap key or a fresh cache
        entry); (False, None) when the table must be asked (``authenticate``, in a worker thread)."""
        if self.admin_token and hmac.compare_digest(token.encode(), self.admin_token.encode()):
            return True, _BOOTSTRAP_ADMIN
        return self._cache.fresh(hash_token(token))

    def authenticate(self, token: str) -> Principal | None:
        if self.admin_token and hmac.compare_digest(token.encode(), self.admin_token.encode()):
            return _BOOTSTRAP_ADMIN
        digest = hash_token(token)
        return self._cache.get_many((digest,), self._load)[digest]

    def _load(self, digests: set[str]) -> dict[str, Principal | None]:
        with self.engine.connect() as conn:
            rows = {row.key_hash: row for row in conn.execute(
                sa.select(api_keys).where(api_keys.c.key_hash.in_(digests), api_keys.c.revoked_at.is_(None)))}
        return {digest: None if (row := rows.get(digest)) is None else Principal(
            row.key_id, frozenset(Scope(s) for s in row.scopes), row.org_id, row.producer) for digest in digests}

    def forget(self) -> None:
        """Drop cached results (after a revocation in this process)."""
        self._cache.forget()


def presented_token(request: Request) -> str | None:
    return presented_token_of(request.headers)


def presented_token_of(headers: Mapping[str, str]) -> str | None:
    """The token of `Authorization: Bearer <token>` or `X-API-Key: <token>`, if any."""
    header = headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    return headers.get("x-api-key") or None


def authenticator_of(request: Request) -> Authenticator:
    """The app's authenticator (built by the composition root; one per app so its cache is shared)."""
    authenticator: Authenticator = request.app.state.authenticator
    return authenticator


async def authenticate(request: Request) -> Principal:
    """Dependency: the caller's principal, or 401. Cached on the request (the idempotency layer uses it).

    The bootstrap key and cached keys are resolved on the event loop; only a cache miss queries the table
    in a worker thread (a thread hop per request costs more than the lookup itself).
    """
    cached: Principal | None = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    token = presented_token(request)
    if token is None:
        raise unauthorized("missing API key (Authorization: Bearer <key>)")
    authenticator = authenticator_of(request)
    hit, principal = authenticator.known(token)
    if not hit:
        principal = await run_in_threadpool(authenticator.authenticate, token)
    if principal is None:
        raise unauthorized("invalid or revoked API key")
    request.state.principal = principal
    return principal


def require(*scopes: Scope) -> Callable[..., Awaitable[Principal]]:
    """Dependency factory: the authenticated principal, 403 unless it holds one of `scopes` (or admin)."""
    wanted = frozenset(scopes)

    async def dependency(principal: Principal = Depends(authenticate)) -> Principal:
        if not principal.has_any(wanted):
            raise forbidden(f"this API key lacks the scope: {' or '.join(sorted(wanted))}")
        return principal

    return dependency

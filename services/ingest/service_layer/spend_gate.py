"""The best-effort spend check of ``POST /v1/ingest`` (and producers writing straight to Kafka): which
orgs are spend-limited and how much they have visibly spent, read at most every ``GATE_TTL_SECONDS`` per org
and process, and the per-event verdicts of one batch (``SpendCheck``). The hard guarantee is the authorisation
path of ``spend.SpendService``; this module only refuses what would visibly pass a limit (see that module's
docstring and docs/architecture.md, "Quotas and spend caps")."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import anyio.to_thread

from shared.adapters.postgres.spend_store import SpendStore
from shared.domain.catalog import OveragePolicy
from shared.domain.spend import SpendDenialReason, quantity_of
from shared.observability import kv

if TYPE_CHECKING:
    from services.ingest.service_layer.spend import SpendService

_log = logging.getLogger("services.ingest.quota.spend")

# NOTE: how long the /v1/ingest check trusts what it read about an org (its cap, its visible spend). It
# adds to the visibility latency in the overshoot bound; one second keeps the check off PostgreSQL for
# nearly every batch of a busy org.
GATE_TTL_SECONDS = 1.0
OUTAGE_RETRY_SECONDS = 1.0


# --- the Kafka path: POST /v1/ingest --------------------------------------------------------------------


class _Event(Protocol):
    @property
    def event_type(self) -> str: ...

    @property
    def properties(self) -> Mapping[str, Any]: ...


class _Routed(Protocol):
    """Where an event of ``POST /v1/ingest`` goes (the edge's ``directory.Route``)."""

    @property
    def customer_id(self) -> str | None: ...

    @property
    def subscription_id(self) -> str | None: ...

    @property
    def plan_id(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class SpendRefusal:
    """Why one event is refused: ``reason`` (the machine-readable code), the field at fault and why."""

    reason: SpendDenialReason
    field: str
    detail: str


@dataclass
class _GateState:
    """What the gate knows of one limited org: the limit, the visible spend, what it accepted since."""

    expires: float
    limit: int | None
    visible: int
    reason: SpendDenialReason
    accepted_since: int = 0


@dataclass
class SpendCheck:
    """The verdicts for one /v1/ingest batch: ``refuse(customer_id, event)`` per event, in batch order."""

    event_type: str
    value_property: str
    states: dict[str, _GateState] = field(default_factory=dict)

    def refuse(self, customer_id: str | None, event: _Event) -> SpendRefusal | None:
        """Why the event would take the org past its limit; otherwise None, and the event's quantity
        counts against the org from now on in this process."""
        if not self.states or event.event_type != self.event_type or customer_id is None:
            return None
        state = self.states.get(customer_id)
        if state is None or state.limit is None:
            return None
        quantity = quantity_of(event.properties.get(self.value_property))
        if quantity is None or quantity <= 0:
            return None
        if state.visible + state.accepted_since + quantity > state.limit:
            what = ("the included credits are used up" if state.reason is SpendDenialReason.INCLUDED_CREDITS_EXHAUSTED
                    else "the organisation's spending cap is reached")
            return SpendRefusal(state.reason, f"properties.{self.value_property}", f"{what} for this billing period")
        state.accepted_since += quantity
        return None


class SpendGate:
    """Per-process view of which orgs are spend-limited and how much they have visibly spent."""

    def __init__(self, service: SpendService, is_outage: Callable[[BaseException], bool]) -> None:
        self._service = service
        self._is_outage = is_outage
        self._caps: dict[str, tuple[float, bool]] = {}
        self._states: dict[str, _GateState | None] = {}
        self._expiry: dict[str, float] = {}
        self._blocking_plans: dict[str, bool | None] = {}
        self._down_since: float | None = None  # monotonic instant the current outage was first seen

    def forget(self, org_id: str) -> None:
        self._caps.pop(org_id, None)
        self._states.pop(org_id, None)
        self._expiry.pop(org_id, None)

    def _plan_kind(self, plan_id: str) -> bool | None:
        """True: the plan blocks compute beyond its credits; False: bills it; None: does not price it."""
        if plan_id not in self._blocking_plans:
            pricing = self._service.pricing(plan_id)
            self._blocking_plans[plan_id] = None if pricing is None else pricing.overage is OveragePolicy.BLOCK
        return self._blocking_plans[plan_id]

    async def check(self, routes: Iterable[_Routed], now: datetime) -> SpendCheck:
        service = self._service
        check = SpendCheck(service.event_type, service.value_property)
        clock = time.monotonic()
        candidates: dict[str, bool] = {}
        for route in routes:
            if route.customer_id is None or route.subscription_id is None or route.plan_id is None:
                continue
            kind = self._plan_kind(route.plan_id)
            if kind is not None:
                candidates[route.customer_id] = kind
        if not candidates:
            return check
        unknown_caps = [org for org, blocking in candidates.items() if not blocking
                        and (org not in self._caps or self._caps[org][0] <= clock)]
        stale = [org for org in candidates if self._expiry.get(org, 0.0) <= clock]
        if unknown_caps or stale:
            await anyio.to_thread.run_sync(self._refresh, unknown_caps, stale, candidates, now, clock)
        for org in candidates:
            state = self._states.get(org)
            if state is not None:
                check.states[org] = state
        return check

    def _refresh(self, unknown_caps: list[str], stale: list[str], candidates: Mapping[str, bool], now: datetime,
                 clock: float) -> None:
        try:
            self._read(unknown_caps, stale, candidates, now, clock)
            if self._down_since is not None:
                _log.warning("spend state readable again", extra=kv(down_s=round(clock - self._down_since, 1)))
                self._down_since = None
        except Exception as error:
            if not self._is_outage(error):
                raise
            # NOTE: PostgreSQL is down. The check is best effort (the hard guarantee is the authorise
            # endpoint, which answers 503 meanwhile): an org keeps the state last read, and what this
            # process accepts keeps counting against it, so an org that was near its limit is still cut
            # off; an org never read (or whose cap was never read) is not refused. Asked again after
            # OUTAGE_RETRY_SECONDS, so an outage costs a batch no connection attempt.
            if self._down_since is None:  # one line per outage, not one traceback per request
                self._down_since = clock
                _log.warning("spend state unavailable (PostgreSQL down): using what was last read",
                             extra=kv(error=f"{type(error).__name__}: {error}"[:300]))
            retry_at = clock + OUTAGE_RETRY_SECONDS
            for org in unknown_caps:
                self._caps[org] = (retry_at, self._caps.get(org, (0.0, False))[1])
            for org in stale:
                self._expiry[org] = retry_at

    def _read(self, unknown_caps: list[str], stale: list[str], candidates: Mapping[str, bool], now: datetime,
              clock: float) -> None:
        expires = clock + GATE_TTL_SECONDS
        with self._service.engine.connect() as conn:
            if unknown_caps:
                capped = SpendStore.caps(conn, unknown_caps)
                for org in unknown_caps:
                    self._caps[org] = (expires, org in capped)
            for org in stale:
                limited = candidates[org] or self._caps.get(org, (0.0, False))[1]
                self._expiry[org] = expires
                if not limited:
                    self._states[org] = None
                    continue
                try:
                    spend = self._service.load(conn, org, now)
                except Exception:
                    # NOTE: the check is best effort (the hard guarantee is the authorise endpoint): an
                    # org whose spend cannot be read now is not refused; the next refresh tries again.
                    _log.warning("spend state unavailable", exc_info=True, extra=kv(customer_id=org))
                    self._states[org] = None
                    continue
                self._states[org] = _GateState(expires, spend.limits.quantity_limit(), spend.visible_quantity,
                                               spend.limits.refusal)
        if len(self._expiry) > 100_000:
            self._caps.clear()
            self._states.clear()
            self._expiry.clear()

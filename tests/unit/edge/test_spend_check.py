"""The best-effort spend check of ``POST /v1/ingest`` (``SpendCheck``): pure, on what the gate last read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from services.ingest.service_layer.spend import SpendCheck, _GateState
from shared.domain.spend import SpendDenialReason

pytestmark = pytest.mark.unit


@dataclass
class Event:
    properties: dict[str, Any] = field(default_factory=dict)
    event_type: str = "inference"


def check(limit: int | None, visible: int, reason: SpendDenialReason = SpendDenialReason.SPEND_CAP_REACHED
          ) -> SpendCheck:
    return SpendCheck("inference", "quantity", {"acme": _GateState(0.0, limit, visible, reason)})


def test_events_are_admitted_until_the_visible_spend_would_pass_the_limit() -> None:
    gate = check(limit=100, visible=60)
    assert gate.refuse("acme", Event({"quantity": 30})) is None
    refusal = gate.refuse("acme", Event({"quantity": 11}))  # 60 visible + 30 accepted here + 11 > 100
    assert refusal is not None
    assert (refusal.reason, refusal.field) == (SpendDenialReason.SPEND_CAP_REACHED, "properties.quantity")
    assert refusal.detail == "the organisation's spending cap is reached for this billing period"
    assert gate.refuse("acme", Event({"quantity": 10})) is None  # exactly at the limit


def test_the_free_tier_says_its_credits_are_used_up() -> None:
    refusal = check(limit=5, visible=5, reason=SpendDenialReason.INCLUDED_CREDITS_EXHAUSTED).refuse(
        "acme", Event({"quantity": "0.5"}))  # a fraction of a unit is never free
    assert refusal is not None and refusal.detail.startswith("the included credits are used up")


@pytest.mark.parametrize(("customer", "event"), [
    ("other", Event({"quantity": 10**9})),  # an org the gate does not limit
    (None, Event({"quantity": 10**9})),  # an unrouted event
    ("acme", Event({"quantity": 10**9}, event_type="storage")),  # another meter
    ("acme", Event({"quantity": "not a number"})),  # left to the usage rules
])
def test_what_the_check_does_not_govern_is_never_refused(customer: str | None, event: Event) -> None:
    assert check(limit=1, visible=1).refuse(customer, event) is None


async def test_the_services_clock_is_read_on_the_event_loop_when_it_is_the_system_clock(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread hop per batch just to read the system clock was ~11 % of the edge's samples at 1,000
    authorisations/s; only a clock that reads PostgreSQL (the simulated one) goes off the loop."""
    import anyio.to_thread

    from services.ingest.service_layer.spend import SpendService
    from shared.adapters.catalog_file import load_default_catalog
    from shared.adapters.clock import SystemClock

    def no_thread(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("the system clock was read in a worker thread")

    monkeypatch.setattr(anyio.to_thread, "run_sync", no_thread)
    service = SpendService(None, SystemClock(), load_default_catalog(), is_outage=lambda _error: False)  # type: ignore[arg-type]

    assert (await service.now()).tzinfo is not None

"""The best-effort spend check of ``POST /v1/ingest`` (``SpendCheck``): pure, on what the gate last read."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from services.ingest.service_layer.spend_gate import SpendCheck, _GateState
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


@dataclass
class BusyOrg:
    """A spend service over one pro-tier org whose reads are counted (at the monotonic ``now``) and can be
    held up; every write succeeds."""

    service: Any
    now: list[float]
    reads: list[float]
    reads_may_finish: threading.Event


def busy_org(monkeypatch: pytest.MonkeyPatch) -> BusyOrg:
    from datetime import UTC, datetime, timedelta
    from decimal import Decimal
    from types import SimpleNamespace

    from services.ingest.service_layer import spend as spend_module
    from services.ingest.service_layer.spend import OrgSpend, SpendService, spend_pricing
    from shared.adapters.catalog_file import load_default_catalog
    from shared.adapters.clock import ManualClock
    from shared.domain.calendar import Period
    from shared.domain.spend import SpendLimits, SpendUsage

    org = BusyOrg(None, [100.0], [], threading.Event())
    org.reads_may_finish.set()
    monkeypatch.setattr(spend_module, "time", SimpleNamespace(monotonic=lambda: org.now[0]))
    monkeypatch.setattr(spend_module, "random", SimpleNamespace(uniform=lambda low, high: high))  # the shortest trust
    at = datetime(2026, 3, 10, tzinfo=UTC)
    catalog = load_default_catalog()
    state = OrgSpend("acme", "sub_acme", "pro", Period(at - timedelta(days=9), at + timedelta(days=22)),
                     SpendLimits.of(spend_pricing(catalog, "pro"), "USD", seats=1),  # type: ignore[arg-type]
                     SpendUsage(materialised=Decimal(0), reserved=0, reserved_materialised=0, other_credit_minor=0), 0)

    def read(org_id: str, asks: Any, at: datetime) -> Any:
        org.reads.append(org.now[0])
        assert org.reads_may_finish.wait(5), "a read was held up"
        return state, {}

    class Writes:
        async def authorise(self, write: Any) -> bool:
            return True

    org.service = SpendService(None, ManualClock(at), catalog, is_outage=lambda _error: False)  # type: ignore[arg-type]
    monkeypatch.setattr(org.service, "_read_batch", read)
    monkeypatch.setattr(org.service, "_ensure_account", lambda org_id: None)
    org.service.write_through(Writes())
    return org


async def test_an_org_busy_without_pause_still_reads_its_spend_again_every_remember_seconds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What only a read can tell (usage materialised from the Kafka path, grants, the subscription) is trusted
    for at most ``REMEMBER_SECONDS`` after it was read. A successful write used to start that second again, so
    an org authorising at least once a second never read again and decided on usage of any age."""
    from itertools import pairwise

    from services.ingest.service_layer.spend import REMEMBER_JITTER, REMEMBER_SECONDS

    org = busy_org(monkeypatch)
    step = REMEMBER_SECONDS / 10
    for i in range(25):  # an authorisation every tenth of REMEMBER_SECONDS for 2.5 of them, each written
        org.now[0] = 100.0 + i * step
        assert (await org.service.authorise("acme", f"r{i}", 1_000)).allowed

    shortest = REMEMBER_SECONDS * (1 - REMEMBER_JITTER)
    # read again ahead of expiry in the background (or by the batch that finds it expired): never trusted longer
    assert org.reads[0] == 100.0 and len(org.reads) >= 4
    assert all(later - earlier <= shortest + 1e-9 for earlier, later in pairwise([*org.reads, org.now[0]]))


async def test_batches_of_a_busy_org_do_not_wait_for_its_reads_after_the_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch that found the org's remembered spend expired used to read it again in a worker thread
    while its requests waited: ~1 % of the requests at 1,000 authorisations/s over 50 orgs, so the p99."""
    from services.ingest.service_layer.spend import REMEMBER_JITTER, REMEMBER_SECONDS

    org = busy_org(monkeypatch)
    shortest = REMEMBER_SECONDS * (1 - REMEMBER_JITTER)
    assert (await org.service.authorise("acme", "r0", 1_000)).allowed  # the first read, on the request path
    org.reads_may_finish.clear()  # from here every read hangs until released
    org.now[0] = 100.0 + shortest - 0.5  # less than a second of trust left: served from memory, read ahead
    assert (await asyncio.wait_for(org.service.authorise("acme", "r1", 1_000), 1)).allowed
    org.reads_may_finish.set()
    while getattr(org.service, "_refreshing", None):  # the read ahead finishes in its worker thread
        await asyncio.sleep(0.01)
    org.reads_may_finish.clear()
    org.now[0] = 100.0 + shortest + 0.5  # past what the first read was trusted for
    answer = await asyncio.wait_for(org.service.authorise("acme", "r2", 1_000), 1)
    org.reads_may_finish.set()
    assert answer.allowed and answer.spent_quantity == 3_000  # each authorisation counted once
    assert org.reads == [100.0, 100.0 + shortest - 0.5]


async def _reads_ahead_finished(service: Any) -> None:
    while any(not task.done() for task in getattr(service, "_refreshing", {}).values()):
        await asyncio.sleep(0.01)


async def test_an_org_back_from_a_pause_does_not_wait_for_a_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """An org idle for longer than its memory is trusted used to read again on its next request, on the request
    path: with 50 orgs coming back together, 150-260 ms for the first quarter of a second of requests."""
    from services.ingest.service_layer.spend import REMEMBER_SECONDS

    org = busy_org(monkeypatch)
    assert (await org.service.authorise("acme", "r0", 1_000)).allowed
    org.now[0] = 100.0 + REMEMBER_SECONDS + 2  # idle past what the first read was trusted for

    assert org.service.warm_up(4, 60.0) == 1  # a round of `keep_warm`
    await _reads_ahead_finished(org.service)
    org.reads_may_finish.clear()  # from here a read hangs until released
    answer = await asyncio.wait_for(org.service.authorise("acme", "r1", 1_000), 1)
    org.reads_may_finish.set()

    assert answer.allowed
    assert org.reads == [100.0, 100.0 + REMEMBER_SECONDS + 2]  # the second, ahead of the request


async def test_orgs_are_kept_warm_most_recent_first_and_forgotten_once_long_unused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from services.ingest.service_layer.spend import REMEMBER_SECONDS

    keep_warm_seconds = 60.0

    org = busy_org(monkeypatch)
    read = org.service._read_batch
    orgs_read: list[str] = []
    monkeypatch.setattr(org.service, "_read_batch",
                        lambda org_id, asks, at: (orgs_read.append(org_id), read(org_id, asks, at))[1])
    for i, org_id in enumerate(("a", "b", "c")):
        org.now[0] = 100.0 + i / 10
        assert (await org.service.authorise(org_id, f"r-{org_id}", 1_000)).allowed
    orgs_read.clear()

    org.now[0] = 100.0 + REMEMBER_SECONDS + 1
    assert org.service.warm_up(2, keep_warm_seconds) == 2
    await _reads_ahead_finished(org.service)
    assert orgs_read == ["c", "b"]
    assert org.service.warm_up(2, keep_warm_seconds) == 1  # c and b are fresh again; a is next
    await _reads_ahead_finished(org.service)
    assert orgs_read == ["c", "b", "a"]

    org.now[0] = 100.2 + keep_warm_seconds + 1
    assert org.service.warm_up(5, keep_warm_seconds) == 0
    assert orgs_read == ["c", "b", "a"]

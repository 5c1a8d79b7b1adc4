"""What the spend service remembers of an org between reads (spend_memory.py); the reads ahead themselves are
tested through the service in test_spend_check.py."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest

from services.ingest.service_layer.spend_memory import Remembered, SpendMemory
from shared.domain.calendar import Period

pytestmark = pytest.mark.unit

AT = datetime(2026, 3, 10, tzinfo=UTC)
MONTH = Period(AT - timedelta(days=9), AT + timedelta(days=22))


@dataclass(frozen=True)
class Look:
    """A read of an org's spend, reduced to what the memory uses."""

    reserved: int
    account_version: int
    observed: int = 0
    period: Period = MONTH


def with_reserved(look: Look, quantity: int, version: int) -> Look:
    return replace(look, reserved=look.reserved + quantity, account_version=version)


def memory(now: list[float]) -> SpendMemory[Look]:
    return SpendMemory(with_reserved, remember_s=5, jitter=0, ahead_s=1, clock=lambda: now[0],
                       uniform=lambda low, high: low)


def read(mem: SpendMemory[Look], look: Look, trusted_until: float = 5) -> Remembered[Look]:
    """``look`` read, and the entry the memory then holds."""
    mem.read("acme", look, AT, trusted_until=trusted_until)
    entry = mem.get("acme", AT)
    assert entry is not None
    return entry


def test_a_read_older_than_this_process_writes_is_brought_up_to_date_with_them() -> None:
    now = [0.0]
    mem = memory(now)
    mem.wrote("acme", read(mem, Look(reserved=100, account_version=3)), 10, AT)  # version 4
    mem.wrote("acme", mem.get("acme", AT), 20, AT)  # type: ignore[arg-type]  # version 5
    # a read taken before those two writes committed, with usage the worker materialised since
    now[0] = 4.5
    mem.read("acme", Look(reserved=100, account_version=3, observed=7), AT, trusted_until=9.5)
    joined = mem.get("acme", AT)
    assert joined is not None
    assert joined.spend == Look(reserved=130, account_version=5, observed=7)
    assert joined.trusted_until == 9.5 and joined.writes == [(4, 10), (5, 20)]


def test_a_read_older_than_someone_elses_write_is_dropped() -> None:
    now = [0.0]
    mem = memory(now)
    mem.read("acme", Look(reserved=100, account_version=3), AT, trusted_until=5)
    mem.read("acme", Look(reserved=150, account_version=5), AT, trusted_until=5)  # version 4: another process
    mem.read("acme", Look(reserved=100, account_version=3, observed=7), AT, trusted_until=9)  # the older one
    entry = mem.get("acme", AT)
    assert entry is not None and entry.spend == Look(reserved=150, account_version=5)


def test_a_newer_read_replaces_what_is_remembered() -> None:
    now = [0.0]
    mem = memory(now)
    mem.read("acme", Look(reserved=100, account_version=3), AT, trusted_until=5)
    mem.read("acme", Look(reserved=100, account_version=3, observed=7), AT, trusted_until=8)
    entry = mem.get("acme", AT)
    assert entry is not None and entry.spend.observed == 7 and entry.trusted_until == 8


@pytest.mark.parametrize(("read_during_the_write", "remembered"), [
    # read at the version the write was decided on: the write advances that newer read
    (Look(reserved=100, account_version=3, observed=7), Look(reserved=110, account_version=4, observed=7)),
    # read after the write committed: the read already holds it, the write changes nothing
    (Look(reserved=110, account_version=4, observed=7), Look(reserved=110, account_version=4, observed=7)),
])
def test_a_write_in_flight_while_a_read_came_in_keeps_the_newer_read(read_during_the_write: Look,
                                                                     remembered: Look) -> None:
    mem = memory([0.0])
    decided_on = read(mem, Look(reserved=100, account_version=3))
    mem.read("acme", read_during_the_write, AT, trusted_until=9)
    mem.wrote("acme", decided_on, 10, AT)
    entry = mem.get("acme", AT)
    assert entry is not None and (entry.spend, entry.trusted_until) == (remembered, 9)


def test_an_entry_is_due_for_a_read_ahead_once_less_than_ahead_s_of_trust_is_left_and_gone_at_expiry() -> None:
    now = [0.0]
    mem = memory(now)
    mem.read("acme", Look(reserved=0, account_version=0), AT, trusted_until=mem.trust_from_now())
    now[0] = 3.9
    assert not mem.due("acme")
    now[0] = 4.1
    assert mem.due("acme") and mem.get("acme", AT) is not None
    now[0] = 5.0
    assert mem.get("acme", AT) is None and not mem.due("acme")


def test_what_is_remembered_serves_only_its_own_period() -> None:
    mem = memory([0.0])
    mem.read("acme", Look(reserved=0, account_version=0), AT, trusted_until=5)
    assert mem.get("acme", MONTH.end + timedelta(seconds=1)) is None


def test_remembered_defaults_to_no_writes() -> None:
    assert Remembered(Look(0, 0), 1.0).writes == []

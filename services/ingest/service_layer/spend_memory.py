"""What the spend service remembers of each org between reads, and how a read joins it, including one made
in the background while authorisations go on (issue 18: the read off the request path).

An entry is one read of the org's spend plus this process's authorisations written since, each with the
account version it committed. Rules:
- **A read** (``read``) replaces the entry when it is at least as new (its account version is not below the
  entry's). When it is older, the entry moved on by this process's own writes after the read's snapshot: if
  every version in between is one of them, the read joins the entry (its usage, grants and limits, plus those
  writes' quantities on top of its reservations, at the entry's version); otherwise it is dropped. Safe
  because each of those writes committed after the read's snapshot, so none of them is in it, and the worker
  cannot have materialised their usage before they were published.
- **A write** (``wrote``) advances the entry it was decided on; if a read replaced that entry while the write
  was in flight at the same version, the write advances the read instead, so the fresh read is kept.
- **Refresh ahead** (``due``): once an entry has less than ``ahead_s`` of trust left, the service reads again
  in the background. Before, the batch that found the entry expired waited for a read in a worker thread:
  with 50 orgs at 1,000 authorisations/s that was about 1 % of the requests, so it set the p99.
Correctness never rests on the entry: every write still compares and sets the account's version, and an
entry that would refuse is read again first (``SpendService._authorise_batch``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from typing import Generic, Protocol, TypeVar

from shared.domain.calendar import Period

MAX_ORGS = 100_000


class Versioned(Protocol):
    @property
    def account_version(self) -> int: ...

    @property
    def period(self) -> Period: ...


S = TypeVar("S", bound=Versioned)


@dataclass(slots=True)
class Remembered(Generic[S]):
    spend: S
    trusted_until: float  # clock() value after which what only a read tells is too old
    writes: list[tuple[int, int]] = field(default_factory=list)  # (version committed, quantity) since the read


class SpendMemory(Generic[S]):
    """Remembered spend per org (see the module docstring). ``with_reserved(spend, quantity, version)`` is
    ``spend`` with ``quantity`` more reserved at account ``version``."""

    def __init__(self, with_reserved: Callable[[S, int, int], S], *, remember_s: float, jitter: float,
                 ahead_s: float, clock: Callable[[], float] = time.monotonic,
                 uniform: Callable[[float, float], float] = random.uniform) -> None:
        self._with_reserved = with_reserved
        self._remember_s = remember_s
        self._jitter = jitter
        self._ahead_s = ahead_s
        self._clock = clock
        self._uniform = uniform
        self._entries: dict[str, Remembered[S]] = {}

    def trust_from_now(self) -> float:
        """Until when a read that starts now is trusted (a fifth less at most, at random, so that orgs read
        together do not all read again together)."""
        return self._clock() + self._remember_s * (1 - self._uniform(0, self._jitter))

    def get(self, org_id: str, at: datetime) -> Remembered[S] | None:
        """The org's entry if it is still trusted and of the period ``at`` is in."""
        entry = self._entries.get(org_id)
        if entry is None:
            return None
        if entry.trusted_until <= self._clock() or not entry.spend.period.contains(at):
            del self._entries[org_id]
            return None
        return entry

    def due(self, org_id: str) -> bool:
        """Whether the org's entry should be read again now, ahead of its expiry."""
        entry = self._entries.get(org_id)
        return entry is not None and entry.trusted_until - self._clock() < self._ahead_s

    def read(self, org_id: str, spend: S, at: datetime, trusted_until: float) -> None:
        """A read of the org's spend, trusted until ``trusted_until``, joins what is remembered."""
        if not spend.period.contains(at):
            return
        entry = self.get(org_id, at)
        if entry is None or spend.account_version >= entry.spend.account_version:
            self._put(org_id, Remembered(spend, trusted_until))
            return
        if spend.period != entry.spend.period:
            return
        later = [(version, quantity) for version, quantity in entry.writes if version > spend.account_version]
        if len(later) != entry.spend.account_version - spend.account_version:
            return  # someone else's write in between: this read cannot be brought up to date
        joined = self._with_reserved(spend, sum(quantity for _, quantity in later), entry.spend.account_version)
        self._put(org_id, Remembered(joined, trusted_until, later))

    def wrote(self, org_id: str, decided_on: Remembered[S], quantity: int, at: datetime) -> None:
        """This process committed ``quantity`` more reserved on the version ``decided_on`` holds."""
        version = decided_on.spend.account_version + 1
        current = self._entries.get(org_id)
        if current is not None and current.spend.account_version >= version:
            return  # read again after the write committed: the read holds it
        if current is not None and current.spend.account_version == decided_on.spend.account_version:
            decided_on = current  # read again while the write was in flight: keep the newer read
        if decided_on.spend.period.contains(at):
            self._put(org_id, Remembered(self._with_reserved(decided_on.spend, quantity, version),
                                         decided_on.trusted_until, [*decided_on.writes, (version, quantity)]))

    def forget(self, org_id: str) -> None:
        self._entries.pop(org_id, None)

    def _put(self, org_id: str, entry: Remembered[S]) -> None:
        if len(self._entries) > MAX_ORGS:
            self._entries.clear()
        self._entries[org_id] = entry


class RecentOrgs:
    """The orgs this process authorised for, each with when it last did (``clock``), least recent first; at most
    ``MAX_ORGS``, the least recent forgotten first. What the keeping warm of idle orgs reads from."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._used: dict[str, float] = {}  # insertion order is recency: a use moves the org to the end

    def used(self, org_id: str) -> None:
        used = self._used
        used.pop(org_id, None)
        used[org_id] = self._clock()
        if len(used) > MAX_ORGS:
            del used[next(iter(used))]

    def most_recent(self, within_s: float, limit: int) -> list[str]:
        """Up to ``limit`` orgs used within the last ``within_s``, the most recent first; the others used
        before that are forgotten."""
        horizon = self._clock() - within_s
        used = self._used
        while used and next(iter(used.values())) < horizon:
            del used[next(iter(used))]
        return list(islice(reversed(used), limit))

"""The Clock port. Domain rules never read the wall clock: callers pass the instant they act at,
and the composition roots obtain it from a Clock (system, or simulated like Stripe's test clocks)."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware UTC."""
        ...

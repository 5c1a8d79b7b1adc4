"""Spend and low-credit alerts of a subscription (issue 15, item 5): which alerts are due now.

Contract:
- A subscription's settings hold spend thresholds (money spent on usage in the current period, minor units of
  the subscription's currency) and low-credit thresholds per money meter (credit left on the meter).
- A spend alert is due when the period's spend reached its threshold; a low-credit alert when the meter's credit
  left fell below its threshold. Each fires ONCE per period and threshold: `alerts_due` leaves out the keys
  already fired in the period (the caller reads them for the current period only, so a new period re-arms every
  alert). Several thresholds crossed at once are all due, each once.
- This module decides; PostgreSQL enforces once-only under concurrency (a UNIQUE (subscription, period_start,
  kind, meter, threshold) row written with the event in one transaction).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from shared.domain.errors import InvalidValueError

MAX_THRESHOLDS: Final = 20


class AlertKind(StrEnum):
    SPEND = "spend"
    LOW_CREDIT = "low_credit"


class InvalidAlertSettings(InvalidValueError):
    """Alert settings that break their rules; `field` and `reason` name what."""

    code = "invalid_alert_settings"

    def __init__(self, message: str, *, field: str, reason: str) -> None:
        super().__init__(message)
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class AlertSettings:
    """Thresholds of one subscription: spend ascending and distinct, low credit per meter (all >= 0)."""

    spend_thresholds_minor: tuple[int, ...] = ()
    low_credit_balance_minor: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def of(cls, spend_thresholds_minor: Collection[int], low_credit_balance_minor: Mapping[str, int]
           ) -> AlertSettings:
        spend = sorted(spend_thresholds_minor)
        if len(spend) > MAX_THRESHOLDS or len(low_credit_balance_minor) > MAX_THRESHOLDS:
            raise InvalidAlertSettings(f"at most {MAX_THRESHOLDS} thresholds of each kind",
                                       field="spend_thresholds_minor", reason="too_many")
        if any(t <= 0 for t in spend):
            raise InvalidAlertSettings("a spend threshold is a positive amount", field="spend_thresholds_minor",
                                       reason="not_positive")
        if len(set(spend)) != len(spend):
            raise InvalidAlertSettings("spend thresholds are distinct", field="spend_thresholds_minor",
                                       reason="duplicate")
        for meter, threshold in low_credit_balance_minor.items():
            if threshold <= 0:
                raise InvalidAlertSettings(f"the low-credit threshold of {meter} is a positive amount",
                                           field=f"low_credit_balance_minor.{meter}", reason="not_positive")
        return cls(tuple(spend), MappingProxyType(dict(sorted(low_credit_balance_minor.items()))))

    @property
    def empty(self) -> bool:
        return not self.spend_thresholds_minor and not self.low_credit_balance_minor


@dataclass(frozen=True)
class AlertDue:
    """An alert to fire: `observed_minor` is the spend (SPEND) or the credit left (LOW_CREDIT)."""

    kind: AlertKind
    threshold_minor: int
    observed_minor: int
    meter_id: str = ""  # LOW_CREDIT only

    @property
    def key(self) -> tuple[str, str, int]:
        """Its identity within a period (kind, meter, threshold): fired once per period."""
        return self.kind.value, self.meter_id, self.threshold_minor


def alerts_due(settings: AlertSettings, *, spend_minor: int | None, remaining_minor: Mapping[str, int],
               fired: Collection[tuple[str, str, int]]) -> list[AlertDue]:
    """The alerts due now and not fired yet in the period (`fired`: the keys fired in the current period).

    `spend_minor` is None when the spend is unknown (nothing checked); `remaining_minor` holds the credit left
    of the meters known (a meter missing is not checked)."""
    due: list[AlertDue] = []
    if spend_minor is not None:
        due += [AlertDue(AlertKind.SPEND, t, spend_minor) for t in settings.spend_thresholds_minor
                if spend_minor >= t]
    for meter, threshold in settings.low_credit_balance_minor.items():
        left = remaining_minor.get(meter)
        if left is not None and left < threshold:
            due.append(AlertDue(AlertKind.LOW_CREDIT, threshold, left, meter))
    seen = set(fired)
    return [a for a in due if a.key not in seen]

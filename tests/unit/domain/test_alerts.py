"""Issue 15, item 5: spend and low-credit alerts, each fired once per period and threshold."""

from __future__ import annotations

import pytest

from shared.domain.alerts import AlertDue, AlertKind, AlertSettings, InvalidAlertSettings, alerts_due

SETTINGS = AlertSettings.of([5_000, 1_000], {"inference": 200})


def fire(spend: int | None, remaining: dict[str, int], fired: set[tuple[str, str, int]]) -> list[AlertDue]:
    due = alerts_due(SETTINGS, spend_minor=spend, remaining_minor=remaining, fired=fired)
    fired |= {a.key for a in due}
    return due


def test_one_batch_crossing_two_spend_thresholds_fires_each_once() -> None:
    fired: set[tuple[str, str, int]] = set()
    assert fire(999, {}, fired) == []
    assert fire(6_000, {}, fired) == [AlertDue(AlertKind.SPEND, 1_000, 6_000), AlertDue(AlertKind.SPEND, 5_000, 6_000)]
    assert fire(7_000, {}, fired) == []  # still above both: already fired this period


def test_thresholds_crossed_one_by_one_fire_one_by_one_and_the_exact_amount_counts() -> None:
    fired: set[tuple[str, str, int]] = set()
    assert [a.threshold_minor for a in fire(1_000, {}, fired)] == [1_000]
    assert [a.threshold_minor for a in fire(5_000, {}, fired)] == [5_000]


def test_low_credit_fires_below_its_threshold_once_and_unknown_meters_are_not_checked() -> None:
    fired: set[tuple[str, str, int]] = set()
    assert fire(None, {"inference": 200}, fired) == []  # at the threshold: not below
    assert fire(None, {"storage": 0}, fired) == []
    assert fire(None, {"inference": 150}, fired) == [AlertDue(AlertKind.LOW_CREDIT, 200, 150, "inference")]
    assert fire(None, {"inference": 0}, fired) == []


def test_a_new_period_re_arms_every_alert() -> None:
    january: set[tuple[str, str, int]] = set()
    fire(6_000, {"inference": 0}, january)
    february: set[tuple[str, str, int]] = set()  # the fired keys are read per period
    assert len(fire(6_000, {"inference": 0}, february)) == 3


@pytest.mark.parametrize(("spend", "low", "field", "reason"), [
    ([0], {}, "spend_thresholds_minor", "not_positive"),
    ([100, 100], {}, "spend_thresholds_minor", "duplicate"),
    ([], {"inference": -1}, "low_credit_balance_minor.inference", "not_positive"),
    (list(range(1, 30)), {}, "spend_thresholds_minor", "too_many"),
])
def test_invalid_settings_name_the_field(spend: list[int], low: dict[str, int], field: str, reason: str) -> None:
    with pytest.raises(InvalidAlertSettings) as caught:
        AlertSettings.of(spend, low)
    assert (caught.value.field, caught.value.reason, caught.value.code) == (field, reason, "invalid_alert_settings")


def test_settings_are_sorted_and_empty_settings_say_so() -> None:
    assert SETTINGS.spend_thresholds_minor == (1_000, 5_000)
    assert AlertSettings.of([], {}).empty and not SETTINGS.empty

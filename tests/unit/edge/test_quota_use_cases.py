"""The report quota's use cases (admission, administration, alerts) through the real wiring
(``quota_wiring.quota_service``) over an in-memory store and a fake notifier: no PostgreSQL, no HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from services.ingest.problems import answer_of
from services.ingest.quota_wiring import quota_service
from services.ingest.service_layer.quota_admin import QuotaService
from services.ingest.service_layer.quota_alerts import AlertNotifications
from services.ingest.service_layer.quota_errors import QuotaRefusalCode, QuotaRefused, SpendContentionError
from services.ingest.service_layer.quota_lanes import Lanes
from shared.adapters.catalog_file import load_default_catalog
from shared.adapters.clock import ManualClock
from shared.domain.calendar import calendar_month
from shared.domain.quota import QuotaAlertKind, QuotaDenialReason
from tests.unit.edge.quota_fakes import FakeNotifier, FakeQuotaStore

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)
MONTH = calendar_month(NOW)


def build() -> tuple[QuotaService, FakeQuotaStore, FakeNotifier]:
    store, notifier = FakeQuotaStore(), FakeNotifier()
    return quota_service(store, ManualClock(NOW), load_default_catalog(), AlertNotifications(notifier)), store, \
        notifier


async def test_requests_arriving_together_are_decided_in_order_and_written_once() -> None:
    quota, store, _ = build()
    await quota.admin.set_plan("acme", "Lite")
    store.calls.clear()
    answers = await asyncio.gather(*(quota.admission.use_credit("acme", f"u{i}", f"e{i}") for i in range(25)))
    assert [a.allowed for a in answers] == [True] * 20 + [False] * 5
    assert {a.reason for a in answers[20:]} == {QuotaDenialReason.ORG_LIMIT_REACHED}
    assert [a.org_remaining for a in answers[:20]] == list(range(19, -1, -1))
    assert store.calls == ["load", "commit_batch"]  # one read, one conditional write for the whole batch
    assert store.months[("acme", MONTH.start)].used == 20


async def test_a_retried_enquiry_gets_the_first_answer_back_and_uses_nothing_more() -> None:
    quota, store, _ = build()
    await quota.admin.set_plan("acme", "Lite")
    first = await quota.admission.use_credit("acme", "ann", "e1")
    again = await quota.admission.use_credit("acme", "ann", "e1")
    twice = await asyncio.gather(quota.admission.use_credit("acme", "ann", "e2"),
                                 quota.admission.use_credit("acme", "ann", "e2"))
    assert (first.replayed, again.replayed, again.org_remaining) == (False, True, first.org_remaining)
    assert [a.replayed for a in twice] == [False, True]
    assert store.months[("acme", MONTH.start)].used == 2


async def test_an_enquiry_run_by_another_user_is_refused_with_its_code() -> None:
    quota, _, _ = build()
    await quota.admin.set_plan("acme", "Lite")
    await quota.admission.use_credit("acme", "ann", "e1")
    with pytest.raises(QuotaRefused) as refused:
        await quota.admission.use_credit("acme", "bob", "e1")
    assert (refused.value.code, refused.value.field) == (QuotaRefusalCode.ENQUIRY_CONFLICT, "enquiry_id")


async def test_an_org_with_neither_plan_nor_trial_is_refused_no_plan() -> None:
    quota, _, _ = build()
    answer = await quota.admission.use_credit("nobody", "ann", "e1")
    assert (answer.allowed, answer.reason, answer.month) == (False, QuotaDenialReason.NO_PLAN, MONTH)


async def test_after_losing_a_write_to_another_process_the_org_is_decided_under_its_row_lock() -> None:
    quota, store, _ = build()
    await quota.admin.set_plan("acme", "Lite")
    await quota.admission.use_credit("acme", "ann", "e1")  # the org's state is now remembered
    store.write_elsewhere("acme")
    store.calls.clear()
    answer = await quota.admission.use_credit("acme", "ann", "e2")
    assert answer.allowed
    assert store.calls == ["commit_batch", "decide_locked"]  # remembered state lost, then the locked path


async def test_a_refusal_is_never_given_on_remembered_state() -> None:
    quota, store, _ = build()
    await quota.admin.set_plan("acme", "Lite")
    await asyncio.gather(*(quota.admission.use_credit("acme", "ann", f"e{i}") for i in range(20)))
    store.write_elsewhere("acme", top_ups=1, month_start=MONTH.start)  # a top-up this process did not see
    answer = await quota.admission.use_credit("acme", "ann", "e21")
    assert answer.allowed, answer


async def test_the_80_percent_alert_is_written_and_notified_once() -> None:
    quota, store, notifier = build()
    await quota.admin.set_plan("acme", "Lite")
    for i in range(17):
        await quota.admission.use_credit("acme", f"u{i}", f"e{i}")
    await asyncio.sleep(0)  # notifications are sent in the background
    kinds = [(key.kind, key.threshold_percent) for (_org, key) in store.alerts]
    assert kinds == [(QuotaAlertKind.THRESHOLD_REACHED.value, 80)]
    assert [n.subject for n in notifier.sent] == ["Report quota of acme: 80% of the monthly allotment used"]
    assert notifier.sent[0].body == "16 of 20 reports used: 80% of the monthly allotment used."


async def test_administration_refusals_carry_a_code_and_the_field_at_fault() -> None:
    quota, _, _ = build()
    refusals = []
    for attempt in (quota.admin.set_plan("acme", "Platinum"), quota.admin.view("acme"),
                    quota.admin.set_plan("acme", "Lite", timezone="Mars/Olympus"),
                    quota.admin.set_alert_thresholds("acme", [0])):
        with pytest.raises(QuotaRefused) as refused:
            await attempt
        refusals.append((refused.value.code, refused.value.field))
    await quota.admin.set_plan("acme", "Lite")
    with pytest.raises(QuotaRefused) as on_plan:
        await quota.admin.start_trial("acme")
    assert refusals == [(QuotaRefusalCode.UNKNOWN_PLAN, "plan"), (QuotaRefusalCode.UNKNOWN_ORG, None),
                        (QuotaRefusalCode.INVALID_TIMEZONE, "timezone"),
                        (QuotaRefusalCode.INVALID_THRESHOLDS, "thresholds_percent")]
    assert on_plan.value.code is QuotaRefusalCode.PLAN_ALREADY_SET


async def test_a_top_up_lifts_the_allotment_for_the_next_decision_at_once() -> None:
    quota, _, _ = build()
    await quota.admin.set_plan("acme", "Lite")
    await asyncio.gather(*(quota.admission.use_credit("acme", "ann", f"e{i}") for i in range(20)))
    view, applied, expires = await quota.admin.top_up("acme", 2, top_up_id="t1", granted_by="ops")
    assert (view.allotment, view.remaining, applied, expires) == (22, 2, True, MONTH.end)
    assert (await quota.admission.use_credit("acme", "ann", "e21")).allowed


def test_every_refusal_code_has_an_http_answer() -> None:
    answers = {code: answer_of(QuotaRefused(code, "refused")) for code in QuotaRefusalCode
               if code is not QuotaRefusalCode.CONTENTION}
    answers[QuotaRefusalCode.CONTENTION] = answer_of(SpendContentionError("retry"))
    assert None not in answers.values()
    assert set(answers) == set(QuotaRefusalCode)
    assert {code: (a.status, a.slug) for code, a in answers.items() if a is not None and code in (
        QuotaRefusalCode.UNKNOWN_ORG, QuotaRefusalCode.PLAN_ALREADY_SET, QuotaRefusalCode.CONTENTION)} == {
        QuotaRefusalCode.UNKNOWN_ORG: (404, "unknown-org"),
        QuotaRefusalCode.PLAN_ALREADY_SET: (409, "plan-already-set"),
        QuotaRefusalCode.CONTENTION: (503, "quota/contention")}


async def test_a_failing_batch_fails_each_of_its_requests_and_the_lane_goes_on() -> None:
    calls: list[list[int]] = []

    async def handle(_key: str, batch: Sequence[int]) -> list[int]:
        calls.append(list(batch))
        if 0 in batch:
            raise RuntimeError("store down")
        return [n * 10 for n in batch]

    lanes: Lanes[int, int] = Lanes(handle, max_batch=2)
    results = await asyncio.gather(*(lanes.submit("org", n) for n in (0, 1, 2, 3)), return_exceptions=True)
    assert [type(r).__name__ if isinstance(r, Exception) else r for r in results] == \
        ["RuntimeError", "RuntimeError", 20, 30]
    assert calls == [[0, 1], [2, 3]]

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from shared.domain.dunning import DunningPolicy
from shared.domain.errors import InvalidTransitionError, InvalidValueError, LifecycleError, NaiveDatetimeError
from shared.domain.money import Money
from shared.domain.payment_attempt import (
    FINAL,
    HARD_DECLINE_CODES,
    INTENT_NOT_CONFIRMABLE,
    TRANSITIONS,
    UNSETTLED,
    AttemptStatus,
    AttemptTransitionError,
    PaymentAttempt,
    Transition,
    is_hard_decline,
    sources_of,
)

pytestmark = pytest.mark.unit

AT = datetime(2025, 3, 1, 12, tzinfo=UTC)
S = AttemptStatus


def attempt(status: AttemptStatus = S.PENDING, *, dispatch_count: int = 0) -> PaymentAttempt:
    made = PaymentAttempt.request(attempt_id="pa_1", invoice_id="in_1", attempt_no=1, subscription_id="sub_1",
                                  customer_id="cus_1", amount=Money(1999, "EUR"), payment_method_id="pm_card_visa",
                                  requested_at=AT)
    made.status = status
    made.dispatch_count = dispatch_count
    return made


# How each transition is asked for, with plausible arguments.
ASK: dict[Transition, Callable[[PaymentAttempt], None]] = {
    Transition.CLAIM: lambda a: a.claim(),
    Transition.RELEASE: lambda a: a.release("stripe refused the credentials"),
    Transition.LOSE_ANSWER: lambda a: a.lose_answer("timeout", "pi_1"),
    Transition.SUCCEED: lambda a: a.succeed(at=AT, provider_ref="pi_1"),
    Transition.DECLINE: lambda a: a.decline(at=AT, code="insufficient_funds", hard=False, provider_ref="pi_1"),
    Transition.ACCEPT_REPORTED_SUCCESS: lambda a: a.accept_reported_success(at=AT, provider_ref="pi_1"),
    Transition.ACCEPT_REPORTED_FAILURE: lambda a: a.accept_reported_failure(at=AT, provider_ref="pi_1",
                                                                            code="stolen_card", hard=True),
    Transition.WITHDRAW: lambda a: a.withdraw(at=AT),
    Transition.CANCEL_DUPLICATE_CHARGE: lambda a: a.cancel_duplicate_charge(at=AT),
}

EXPECTED_SOURCES = {
    Transition.CLAIM: {S.PENDING, S.IN_FLIGHT, S.UNKNOWN},
    Transition.RELEASE: {S.IN_FLIGHT},
    Transition.LOSE_ANSWER: {S.IN_FLIGHT},
    Transition.SUCCEED: {S.IN_FLIGHT},
    Transition.DECLINE: {S.IN_FLIGHT},
    Transition.ACCEPT_REPORTED_SUCCESS: {S.PENDING, S.IN_FLIGHT, S.UNKNOWN, S.DECLINED},
    Transition.ACCEPT_REPORTED_FAILURE: {S.PENDING, S.IN_FLIGHT, S.UNKNOWN},
    Transition.WITHDRAW: {S.PENDING},
    Transition.CANCEL_DUPLICATE_CHARGE: {S.IN_FLIGHT},
}

LEGAL = [(t, s) for t in Transition for s in AttemptStatus if s in EXPECTED_SOURCES[t]]
ILLEGAL = [(t, s) for t in Transition for s in AttemptStatus if s not in EXPECTED_SOURCES[t]]


def test_the_table_is_what_the_executor_and_the_worker_rely_on() -> None:
    assert set(ASK) == set(Transition)
    assert {t: set(sources_of(t)) for t in Transition} == EXPECTED_SOURCES


@pytest.mark.parametrize(("transition", "start"), LEGAL, ids=[f"{t}-from-{s}" for t, s in LEGAL])
def test_every_legal_move_lands_on_its_target_and_names_itself(transition: Transition,
                                                               start: AttemptStatus) -> None:
    subject = attempt(start, dispatch_count=1)
    ASK[transition](subject)
    assert subject.status is TRANSITIONS[transition].target
    assert subject.last_transition is transition


@pytest.mark.parametrize(("transition", "start"), ILLEGAL, ids=[f"{t}-from-{s}" for t, s in ILLEGAL])
def test_every_illegal_move_is_refused_and_changes_nothing(transition: Transition, start: AttemptStatus) -> None:
    subject = attempt(start, dispatch_count=1)
    with pytest.raises(AttemptTransitionError) as refused:
        ASK[transition](subject)
    assert (subject.status, subject.dispatch_count, subject.completed_at, subject.last_transition) == (
        start, 1, None, None)
    assert isinstance(refused.value, InvalidTransitionError) and isinstance(refused.value, LifecycleError)
    assert refused.value.current == start.value and refused.value.transition is transition
    assert "pa_1" in str(refused.value) and transition.value in str(refused.value)


@pytest.mark.parametrize("final", sorted(FINAL))
def test_succeeded_and_cancelled_are_final(final: AttemptStatus) -> None:
    assert not [t for t in Transition if final in sources_of(t)]


def test_a_new_attempt_is_pending_and_keyed_by_its_own_id() -> None:
    new = attempt()
    assert (new.status, new.idempotency_key, new.dispatch_count, new.reason) == (S.PENDING, "pa_1", 0, "initial")
    assert not new.is_settled


def test_a_claim_counts_a_dispatch_and_a_second_claim_asks_for_a_lookup_first() -> None:
    subject = attempt()
    subject.claim()
    assert (subject.dispatch_count, subject.needs_lookup) == (1, False)
    subject.lose_answer("timeout", "pi_1")
    subject.claim()
    assert (subject.dispatch_count, subject.needs_lookup, subject.provider_ref) == (2, True, "pi_1")


def test_a_release_gives_the_dispatch_back_because_nothing_reached_the_provider() -> None:
    subject = attempt()
    subject.claim()
    subject.release("bad credentials")
    assert (subject.status, subject.dispatch_count, subject.error_message) == (S.PENDING, 0, "bad credentials")


def test_a_lost_answer_keeps_the_provider_object_it_already_knew() -> None:
    subject = attempt(S.IN_FLIGHT)
    subject.provider_ref = "pi_known"
    subject.lose_answer("HTTP 500", None)
    assert (subject.status, subject.provider_ref, subject.is_settled) == (S.UNKNOWN, "pi_known", False)


def test_a_decline_records_its_code_hardness_and_instant() -> None:
    subject = attempt(S.IN_FLIGHT)
    subject.decline(at=AT, code="stolen_card", hard=True, provider_ref="pi_1", message="lost")
    assert (subject.decline_code, subject.hard_decline, subject.completed_at, subject.error_message,
            subject.is_settled) == ("stolen_card", True, AT, "lost", True)


def test_a_success_reported_later_replaces_a_decline() -> None:
    subject = attempt(S.IN_FLIGHT)
    subject.decline(at=AT, code="insufficient_funds", hard=False, provider_ref="pi_1")
    subject.accept_reported_success(at=AT, provider_ref=None)
    assert (subject.status, subject.decline_code, subject.hard_decline, subject.provider_ref) == (
        S.SUCCEEDED, None, False, "pi_1")


def test_a_duplicate_charge_is_cancelled_with_a_refund_note() -> None:
    subject = attempt(S.IN_FLIGHT)
    subject.cancel_duplicate_charge(at=AT)
    assert subject.status is S.CANCELLED and "refund required" in (subject.error_message or "")


def test_only_an_attempt_not_sent_yet_forgets_its_payment_method() -> None:
    pending = attempt()
    pending.forget_payment_method()
    assert pending.payment_method_id is None
    with pytest.raises(InvalidValueError):
        attempt(S.IN_FLIGHT).forget_payment_method()


def test_unsettled_is_what_has_no_answer_recorded_yet() -> None:
    assert {s for s in AttemptStatus if not attempt(s).is_settled} == set(UNSETTLED) == {
        S.PENDING, S.IN_FLIGHT, S.UNKNOWN}


@pytest.mark.parametrize("bad", [
    {"attempt_no": 0},
    {"amount": Money(0, "EUR")},
    {"idempotency_key": ""},
])
def test_an_attempt_needs_a_number_a_positive_amount_and_a_key(bad: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "attempt_id": "pa_1", "invoice_id": "in_1", "attempt_no": 1, "subscription_id": "sub_1",
        "customer_id": "cus_1", "amount": Money(100, "EUR"), "payment_method_id": None,
        "idempotency_key": "pa_1", "requested_at": AT, **bad}
    with pytest.raises(InvalidValueError):
        PaymentAttempt(**fields)  # type: ignore[arg-type]


def test_instants_must_be_aware() -> None:
    with pytest.raises(NaiveDatetimeError):
        attempt(S.IN_FLIGHT).succeed(at=datetime(2025, 3, 1), provider_ref="pi_1")


# --- the one decline classification


@pytest.mark.parametrize("code", ["stolen_card", "lost_card", "fraudulent", "expired_card", "invalid_account",
                                  "incorrect_number", "invalid_number", "resource_missing",
                                  "payment_method_unactivated", INTENT_NOT_CONFIRMABLE])
def test_codes_that_say_the_method_can_never_succeed_are_hard(code: str) -> None:
    assert is_hard_decline(code) and DunningPolicy().is_hard_decline(code)


@pytest.mark.parametrize("code", [None, "insufficient_funds", "do_not_honor", "generic_decline",
                                  "try_again_later", "processing_error", "payment_method_missing",
                                  "authentication_required"])
def test_soft_declines_are_retried_on_the_schedule(code: str | None) -> None:
    assert not is_hard_decline(code) and not DunningPolicy().is_hard_decline(code)


def test_dunning_and_the_gateways_share_one_set_of_hard_codes() -> None:
    assert DunningPolicy().hard_decline_codes == HARD_DECLINE_CODES
